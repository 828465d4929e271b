//! The closed set of blob stores ([`AnyBlobs`]), dispatched by `match`.

use super::blobs::Unfinished;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::blobs::{Blobs, Entry, Opened, Put, Small};
use super::dir::{DirBlobs, DirPartial, DirPut};
use super::s3::{MultipartUpload, S3Blobs, S3Put};
use crate::aligned::AlignedBuf;
use crate::{Error, Result};

/// The stores lifeboat has.
#[derive(Clone)]
pub enum AnyBlobs {
    Dir(DirBlobs),
    S3(S3Blobs),
}

pub enum AnyPut {
    Dir(DirPut),
    S3(S3Put),
}

/// An incomplete upload of one of [`AnyBlobs`].
pub enum AnyIncomplete {
    Dir(DirPartial),
    S3(MultipartUpload),
}

impl Unfinished for AnyIncomplete {
    fn blob(&self) -> String {
        match self {
            AnyIncomplete::Dir(u) => u.blob(),
            AnyIncomplete::S3(u) => u.blob(),
        }
    }
}

impl std::fmt::Display for AnyIncomplete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AnyIncomplete::Dir(u) => u.fmt(f),
            AnyIncomplete::S3(u) => u.fmt(f),
        }
    }
}

/// Calls the same method on whichever store this is.
macro_rules! each {
    ($self:expr, $b:ident => $call:expr) => {
        match $self {
            AnyBlobs::Dir($b) => $call,
            AnyBlobs::S3($b) => $call,
        }
    };
}

impl Blobs for AnyBlobs {
    type Put = AnyPut;
    type Incomplete = AnyIncomplete;

    fn describe(&self) -> String {
        each!(self, b => b.describe())
    }
    fn place(&self, name: &str) -> String {
        each!(self, b => b.place(name))
    }
    fn check_is_fatal(&self) -> bool {
        each!(self, b => b.check_is_fatal())
    }
    fn local_folder(&self) -> Option<&Path> {
        each!(self, b => b.local_folder())
    }
    fn requests(&self) -> super::requests::Counts {
        each!(self, b => b.requests())
    }
    async fn check(&self) -> Result<()> {
        each!(self, b => b.check().await)
    }
    async fn names(&self) -> Result<Vec<Entry>> {
        each!(self, b => b.names().await)
    }
    async fn confirm_empty(&self) -> Result<()> {
        each!(self, b => b.confirm_empty().await)
    }
    async fn get_small(&self, name: &str, cap: u64) -> Result<Small> {
        each!(self, b => b.get_small(name, cap).await)
    }
    async fn open(&self, name: &str) -> Result<Opened> {
        each!(self, b => b.open(name).await)
    }
    async fn put_small(&self, name: &str, bytes: Vec<u8>, replace: bool) -> Result<()> {
        each!(self, b => b.put_small(name, bytes, replace).await)
    }
    async fn put_new(&self, name: &str) -> Result<AnyPut> {
        match self {
            AnyBlobs::Dir(b) => b.put_new(name).await.map(AnyPut::Dir),
            AnyBlobs::S3(b) => b.put_new(name).await.map(AnyPut::S3),
        }
    }
    async fn delete(&self, name: &str, durable: bool) -> Result<()> {
        each!(self, b => b.delete(name, durable).await)
    }
    async fn locked_until(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        each!(self, b => b.locked_until(name).await)
    }
    async fn incomplete(&self) -> Result<Vec<(AnyIncomplete, DateTime<Utc>)>> {
        Ok(match self {
            AnyBlobs::Dir(b) => tag(b.incomplete().await?, AnyIncomplete::Dir),
            AnyBlobs::S3(b) => tag(b.incomplete().await?, AnyIncomplete::S3),
        })
    }
    async fn abort_incomplete(&self, upload: &AnyIncomplete) -> Result<()> {
        match (self, upload) {
            (AnyBlobs::Dir(b), AnyIncomplete::Dir(u)) => b.abort_incomplete(u).await,
            (AnyBlobs::S3(b), AnyIncomplete::S3(u)) => b.abort_incomplete(u).await,
            _ => Err(Error::Target {
                target: self.describe(),
                message: format!("{upload} is an upload of another store"),
            }),
        }
    }
}

fn tag<U>(
    found: Vec<(U, DateTime<Utc>)>,
    wrap: fn(U) -> AnyIncomplete,
) -> Vec<(AnyIncomplete, DateTime<Utc>)> {
    found.into_iter().map(|(u, t)| (wrap(u), t)).collect()
}

impl Put for AnyPut {
    async fn write(&mut self, chunk: AlignedBuf) -> Result<Option<AlignedBuf>> {
        match self {
            AnyPut::Dir(p) => p.write(chunk).await,
            AnyPut::S3(p) => p.write(chunk).await,
        }
    }
    async fn finish(self) -> Result<()> {
        match self {
            AnyPut::Dir(p) => p.finish().await,
            AnyPut::S3(p) => p.finish().await,
        }
    }
    async fn abort(self) {
        match self {
            AnyPut::Dir(p) => p.abort().await,
            AnyPut::S3(p) => p.abort().await,
        }
    }
}
