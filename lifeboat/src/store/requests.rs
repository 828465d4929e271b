//! What a store's requests cost: every HTTP request an S3 client sends,
//! retries included (each is billed), counted by operation, so a backup,
//! a retention run or an idle hour can say how many it made (README,
//! "Request cost"). A folder target makes none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Requests sent so far, by operation (`PutObject`, `UploadPart`, ...).
/// Clones count into the same totals.
#[derive(Debug, Clone, Default)]
pub struct Requests(Arc<Mutex<BTreeMap<String, u64>>>);

impl Requests {
    /// The totals now.
    pub fn now(&self) -> Counts {
        Counts(self.0.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Requests by operation at one moment; the difference of two is what
/// was sent between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    /// What was sent since `before`.
    pub fn since(&self, before: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .filter_map(|(op, n)| {
                    let d = n.saturating_sub(before.0.get(op).copied().unwrap_or(0));
                    (d > 0).then(|| (op.clone(), d))
                })
                .collect(),
        )
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// `PutObject=3 UploadPart=128`: for a log line.
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (op, n) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{op}={n}")?;
        }
        Ok(())
    }
}

impl Intercept for Requests {
    fn name(&self) -> &'static str {
        "lifeboat-request-count"
    }

    /// Once per attempt: a retried request is another billed request.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg
            .load::<Metadata>()
            .map_or_else(|| "unknown".to_string(), |m| m.name().to_string());
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_insert(0) += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_since_an_earlier_moment() {
        let before = Counts([("ListObjectsV2".to_string(), 2)].into());
        let now = Counts(
            [
                ("ListObjectsV2".to_string(), 3),
                ("PutObject".to_string(), 2),
            ]
            .into(),
        );
        let d = now.since(&before);
        assert_eq!(d.to_string(), "ListObjectsV2=1 PutObject=2");
        assert_eq!(d.total(), 3);
        assert_eq!(now.since(&now), Counts::default());
    }
}
