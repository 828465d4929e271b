//! The pod's annotations as the run loop follows them: re-read while idle,
//! a new `lifeboat.dev/backup-now` value served even while another
//! annotation is invalid, and changes that come during a backup held until
//! it is done (a `backup-now` among them is served by that backup).

use std::collections::BTreeMap;

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::{Inputs, Role, Settings};

/// The annotation that asks for a backup now.
pub const BACKUP_NOW: &str = "lifeboat.dev/backup-now";

/// What a look at the annotations calls for.
pub(super) enum Change {
    /// Valid new settings. `backup_now`: they carry a `backup-now` value no
    /// backup has served; `rescheduled`: the schedule or verify schedule moved.
    Accepted {
        settings: Box<Settings>,
        backup_now: bool,
        rescheduled: bool,
    },
    /// The change was rejected, but it asks for a backup now: serve it with
    /// the settings in force.
    BackupNowAnyway,
}

pub(super) struct Annotations {
    inputs: Inputs,
    /// The pod's annotations through the API, when the file is not mounted.
    from_api: Option<watch::Receiver<BTreeMap<String, String>>>,
    last_rejection: Option<String>,
    /// Annotations changed during a backup; apply them once it is done.
    dirty: bool,
    /// A `backup-now` annotation value already served by a running backup.
    joined: Option<String>,
}

impl Annotations {
    pub fn new(
        inputs: Inputs,
        from_api: Option<watch::Receiver<BTreeMap<String, String>>>,
    ) -> Self {
        Annotations {
            inputs,
            from_api,
            last_rejection: None,
            dirty: false,
            joined: None,
        }
    }

    /// While idle: reads the annotations again; returns what a change
    /// calls for, judged against the settings in force.
    pub fn poll(&mut self, settings: &Settings) -> Option<Change> {
        let changed = self.refresh_inputs();
        if !changed && !self.dirty && self.inputs.problems.is_empty() {
            return None;
        }
        self.dirty = false;
        match Settings::from_inputs(&self.inputs, Role::Backup) {
            Ok(new) => {
                self.last_rejection = None;
                let backup_now = self.new_request(settings).is_some();
                let rescheduled = new.schedule != settings.schedule
                    || new.ops.verify_schedule != settings.ops.verify_schedule;
                self.joined = None;
                Some(Change::Accepted {
                    settings: Box::new(new),
                    backup_now,
                    rescheduled,
                })
            }
            Err(e) => {
                // A garbled file fails the same way on every poll: say it once.
                let text = e.to_string();
                if self.last_rejection.as_ref() != Some(&text) {
                    error!(
                        "annotation change rejected, the previous settings stay in force: {text}"
                    );
                    self.last_rejection = Some(text);
                }
                self.inputs.problems.clear();
                // A person asking for a backup must not wait for someone
                // to fix an unrelated annotation: serve it with the
                // settings in force.
                let asked = self.new_request(settings)?;
                info!(
                    value = %asked,
                    "annotation lifeboat.dev/backup-now changed; backing up with the previous settings while the rejected annotation stays as it is"
                );
                self.joined = Some(asked);
                Some(Change::BackupNowAnyway)
            }
        }
    }

    /// During a backup: a new `backup-now` annotation is served by it.
    /// Other changes wait until it is done.
    pub fn poll_during_backup(&mut self, settings: &Settings) {
        if self.refresh_inputs() {
            self.dirty = true;
        }
        if !self.dirty {
            return;
        }
        if let Some(asked) = self.new_request(settings) {
            info!("annotation lifeboat.dev/backup-now changed during a running backup; that backup serves it");
            self.joined = Some(asked);
        }
    }

    /// A `backup-now` annotation value no backup has served yet. Read from
    /// the raw annotations, so it counts even while another annotation is
    /// invalid.
    fn new_request(&self, settings: &Settings) -> Option<String> {
        let asked = self.inputs.annotations.get(BACKUP_NOW)?;
        let served = |v: &Option<String>| v.as_ref() == Some(asked);
        (!served(&settings.backup_now) && !served(&self.joined)).then(|| asked.clone())
    }

    fn refresh_inputs(&mut self) -> bool {
        match &mut self.from_api {
            Some(rx) => {
                rx.has_changed().unwrap_or(false)
                    && self.inputs.set_annotations(rx.borrow_and_update().clone())
            }
            None => self.inputs.reload_annotations(),
        }
    }
}
