//! Settings for the sidecar as a service: its HTTP endpoint, when backups
//! count as stale, scheduled verification, notifications and hooks.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use super::reader::{parse_duration, Problems, Raw, Value};
use crate::schedule::{self, Schedule};

/// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
pub const DEFAULT_LISTEN: &str = ":9746";
/// Twice the drill component's default weekly schedule.
pub const DEFAULT_DRILL_STALE_AFTER: Duration = Duration::from_secs(14 * 86400);
/// A hook that runs longer than this is killed and counts as failed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default)]
pub struct Ops {
    /// `LIFEBOAT_LISTEN`; `None` when `off`.
    pub listen: Option<SocketAddr>,
    /// `LIFEBOAT_STALE_AFTER`; `None` means twice the schedule's interval.
    pub stale_after: Option<Duration>,
    /// When restore drills count as stale: `LIFEBOAT_DRILL_STALE_AFTER`, by
    /// default twice the longest gap of `LIFEBOAT_DRILL_SCHEDULE`, without
    /// one [`DEFAULT_DRILL_STALE_AFTER`]. `None` when no drills are
    /// configured for this pod (no `LIFEBOAT_DRILL_CHECK`).
    pub drill_stale_after: Option<Duration>,
    /// `LIFEBOAT_VERIFY_SCHEDULE`: when to re-read the newest artifacts.
    pub verify_schedule: Option<Schedule>,
    pub notify: Option<Notify>,
    /// `LIFEBOAT_PRE_COMMAND`: runs before each backup; failing fails it.
    pub pre_command: Option<Hook>,
    /// `LIFEBOAT_POST_COMMAND`: runs after each backup, whatever the result.
    pub post_command: Option<Hook>,
    /// `LIFEBOAT_BACKUP_AT_START`: back up when the sidecar starts if the
    /// history has no backup yet or missed its last scheduled run.
    pub backup_at_start: bool,
}

impl Ops {
    /// The address `backup-now` uses to reach the running sidecar: the
    /// listener's port on loopback when it listens on every interface.
    pub fn loopback(&self) -> Option<SocketAddr> {
        let a = self.listen?;
        Some(if a.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        } else {
            a
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyOn {
    Failure,
    Always,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyFormat {
    Json,
    Slack,
}

/// `LIFEBOAT_NOTIFY_*`. The URL often is the secret (a Slack webhook), so
/// it is shown only as scheme and host.
#[derive(Clone)]
pub struct Notify {
    pub url: Url,
    pub on: NotifyOn,
    pub format: NotifyFormat,
}

impl Notify {
    /// `https://hooks.slack.com/…`: enough to tell which receiver is meant.
    pub fn shown_url(&self) -> String {
        format!(
            "{}://{}/…",
            self.url.scheme(),
            self.url.host_str().unwrap_or_default()
        )
    }
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notify")
            .field("url", &self.shown_url())
            .field("on", &self.on)
            .field("format", &self.format)
            .finish()
    }
}

/// A command run directly (no shell: the image has none), split like a
/// shell would split words.
#[derive(Clone)]
pub struct Hook {
    /// `LIFEBOAT_PRE_COMMAND` or `LIFEBOAT_POST_COMMAND`, for messages.
    pub setting: &'static str,
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// Arguments may hold passwords: only the program is shown.
impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} arguments)",
            self.argv.first().map(String::as_str).unwrap_or_default(),
            self.argv.len().saturating_sub(1)
        )
    }
}

/// `name` is the backup history's (`LIFEBOAT_NAME`): drills are watched
/// only by the sidecar of the history they drill.
pub(super) fn parse(raw: &Raw, name: &str, problems: &mut Problems) -> Ops {
    let value = |setting: &str, text: &str| Value {
        setting: setting.into(),
        text: text.into(),
    };

    let listen_text = set(&raw.opt("LIFEBOAT_LISTEN")).unwrap_or_else(|| DEFAULT_LISTEN.into());
    let listen = parse_listen(&listen_text).unwrap_or_else(|m| {
        problems.fail(&value("LIFEBOAT_LISTEN", &listen_text), m);
        None
    });

    let stale_after = positive(raw, "LIFEBOAT_STALE_AFTER", "2d, 36h", problems);
    let timeout =
        positive(raw, "LIFEBOAT_HOOK_TIMEOUT", "5m", problems).unwrap_or(DEFAULT_HOOK_TIMEOUT);
    let drill_stale_after = drill_stale_after(raw, name, Utc::now(), problems);

    let verify_schedule = set(&raw.opt("LIFEBOAT_VERIFY_SCHEDULE"))
        .filter(|t| t != "off")
        .and_then(|t| match Schedule::parse(&t) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.fail(
                    &value("LIFEBOAT_VERIFY_SCHEDULE", &t),
                    format!("{e}; accepted: off (the default) or {}", schedule::ACCEPTED),
                );
                None
            }
        });

    let on = match set(&raw.opt("LIFEBOAT_NOTIFY_ON")).as_deref() {
        None | Some("failure") => NotifyOn::Failure,
        Some("always") => NotifyOn::Always,
        Some(other) => {
            problems.fail(
                &value("LIFEBOAT_NOTIFY_ON", other),
                "accepted: failure (the default) or always".into(),
            );
            NotifyOn::Failure
        }
    };
    let format = match set(&raw.opt("LIFEBOAT_NOTIFY_FORMAT")).as_deref() {
        None | Some("json") => NotifyFormat::Json,
        Some("slack") => NotifyFormat::Slack,
        Some(other) => {
            problems.fail(
                &value("LIFEBOAT_NOTIFY_FORMAT", other),
                "accepted: json (the default) or slack".into(),
            );
            NotifyFormat::Json
        }
    };
    let notify = set(&raw.opt("LIFEBOAT_NOTIFY_URL")).and_then(|t| match Url::parse(&t) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {
            Some(Notify { url, on, format })
        }
        // The value is likely a secret webhook: name the setting, not the URL.
        _ => {
            problems.fail(
                &value("LIFEBOAT_NOTIFY_URL", "(hidden)"),
                "accepted: an http:// or https:// URL, e.g. https://hooks.slack.com/services/…"
                    .into(),
            );
            None
        }
    });

    let backup_at_start = match set(&raw.opt("LIFEBOAT_BACKUP_AT_START")).as_deref() {
        None | Some("off" | "false") => false,
        Some("on" | "true") => true,
        Some(other) => {
            problems.fail(
                &value("LIFEBOAT_BACKUP_AT_START", other),
                "accepted: off (the default) or on (back up at start when the history has no backup yet or missed its last scheduled run)".into(),
            );
            false
        }
    };
    let mut hook = |setting: &'static str, raw: &Option<String>| {
        let text = set(raw)?;
        match shell_words::split(&text) {
            Ok(argv) if !argv.is_empty() => Some(Hook {
                setting,
                argv,
                timeout,
            }),
            _ => {
                problems.fail(
                    &value(setting, "(hidden)"),
                    "accepted: a program and its arguments, quoted as in a shell, e.g. /usr/bin/pg_ctl checkpoint (no shell runs it)".into(),
                );
                None
            }
        }
    };
    let pre_command = hook("LIFEBOAT_PRE_COMMAND", &raw.opt("LIFEBOAT_PRE_COMMAND"));
    let post_command = hook("LIFEBOAT_POST_COMMAND", &raw.opt("LIFEBOAT_POST_COMMAND"));

    Ops {
        listen,
        stale_after,
        drill_stale_after,
        verify_schedule,
        notify,
        pre_command,
        post_command,
        backup_at_start,
    }
}

/// When restore drills count as stale, for the sidecar of the history they
/// drill: drills are configured where their check is (the drill
/// component's settings share the lifeboat ConfigMap with the sidecar), for
/// the one history the drill restores (`LIFEBOAT_DRILL_NAME`, which the
/// component sets to `<statefulset>-0`; `off` where no drill runs). By
/// default twice the longest gap of the drill CronJob's schedule, which the
/// component copies into `LIFEBOAT_DRILL_SCHEDULE`, as backups are stale
/// after twice theirs.
fn drill_stale_after(
    raw: &Raw,
    name: &str,
    now: DateTime<Utc>,
    problems: &mut Problems,
) -> Option<Duration> {
    let other_history = matches!(set(&raw.opt("LIFEBOAT_DRILL_NAME")), Some(n) if n != name);
    set(&raw.opt("LIFEBOAT_DRILL_CHECK")).filter(|_| !other_history)?;
    let schedule = set(&raw.opt("LIFEBOAT_DRILL_SCHEDULE")).and_then(|t| {
        Schedule::parse(&t)
            .map_err(|e| {
                let v = Value {
                    setting: "LIFEBOAT_DRILL_SCHEDULE".into(),
                    text: t.clone(),
                };
                problems.fail(
                    &v,
                    format!(
                        "{e}; accepted: {} (the drill component copies it from the \
                         StatefulSet's lifeboat.dev/drill-schedule annotation)",
                        schedule::ACCEPTED
                    ),
                );
            })
            .ok()
    });
    let twice_the_interval = schedule
        .and_then(|s| s.interval(now))
        .and_then(|gap| (gap * 2).to_std().ok());
    Some(
        positive(raw, "LIFEBOAT_DRILL_STALE_AFTER", "14d", problems)
            .or(twice_the_interval)
            .unwrap_or(DEFAULT_DRILL_STALE_AFTER),
    )
}

/// A setting's text, trimmed; `None` when unset or blank.
fn set(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
}

/// A duration setting that must be longer than 0; a bad value is a problem
/// naming the setting, the value and an `example`.
fn positive(raw: &Raw, setting: &str, example: &str, problems: &mut Problems) -> Option<Duration> {
    let t = set(&raw.opt(setting))?;
    let why = match parse_duration(&t) {
        Ok(d) if !d.is_zero() => return Some(d),
        Ok(_) => format!("must be longer than 0; e.g. {example}"),
        Err(m) => m,
    };
    let v = Value {
        setting: setting.into(),
        text: t,
    };
    problems.fail(&v, why);
    None
}

/// `:9746` (every interface), `127.0.0.1:9746`, `[::]:9746`, or `off`.
fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    const ACCEPTED: &str =
        "accepted: off, :PORT (every interface), or ADDRESS:PORT, e.g. 127.0.0.1:9746";
    if text == "off" {
        return Ok(None);
    }
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_string(),
    };
    full.parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| ACCEPTED.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen(":9746").unwrap(),
            Some("0.0.0.0:9746".parse().unwrap())
        );
        assert_eq!(
            parse_listen("127.0.0.1:1234").unwrap(),
            Some("127.0.0.1:1234".parse().unwrap())
        );
        assert_eq!(parse_listen("off").unwrap(), None);
        assert!(parse_listen("9746").unwrap_err().contains(":PORT"));
        assert!(parse_listen("localhost:80").is_err());
    }

    #[test]
    fn loopback_for_every_interface() {
        let ops = Ops {
            listen: Some("0.0.0.0:9746".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(ops.loopback(), Some("127.0.0.1:9746".parse().unwrap()));
    }

    fn drill_stale(vars: &[(&str, &str)]) -> (Option<Duration>, Vec<String>) {
        let env: std::collections::BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut problems = Problems(Vec::new());
        // A Monday: the next runs of a weekly schedule are 7 days apart.
        let now = "2026-11-30T12:00:00Z".parse().unwrap();
        let d = drill_stale_after(&Raw(&env), "orders-0", now, &mut problems);
        let shown = problems.0.iter().map(|p| p.to_string()).collect();
        (d, shown)
    }

    #[test]
    fn drills_are_stale_after_twice_their_schedule() {
        let check = ("LIFEBOAT_DRILL_CHECK", "test -s /data/a");
        let day = Duration::from_secs(86400);
        assert_eq!(drill_stale(&[check]).0, Some(14 * day), "no schedule");
        let weekly = ("LIFEBOAT_DRILL_SCHEDULE", "0 3 * * 0");
        assert_eq!(drill_stale(&[check, weekly]).0, Some(14 * day));
        let daily = ("LIFEBOAT_DRILL_SCHEDULE", "@daily");
        assert_eq!(drill_stale(&[check, daily]).0, Some(2 * day));
        let own = ("LIFEBOAT_DRILL_STALE_AFTER", "3d");
        assert_eq!(drill_stale(&[check, daily, own]).0, Some(3 * day));
        // Not this pod's drill, or no drill: no schedule read at all.
        let other = ("LIFEBOAT_DRILL_NAME", "orders-1");
        let bad = ("LIFEBOAT_DRILL_SCHEDULE", "weekly");
        assert_eq!(drill_stale(&[check, other, bad]), (None, vec![]));
        assert_eq!(drill_stale(&[bad]), (None, vec![]));
        let (d, problems) = drill_stale(&[check, bad]);
        assert_eq!(d, Some(14 * day));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert!(
            p.contains("LIFEBOAT_DRILL_SCHEDULE")
                && p.contains("\"weekly\"")
                && p.contains("@weekly")
                && p.contains("lifeboat.dev/drill-schedule"),
            "{p}"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let n = Notify {
            url: Url::parse("https://hooks.slack.com/services/T0/B0/SECRET").unwrap(),
            on: NotifyOn::Failure,
            format: NotifyFormat::Slack,
        };
        let h = Hook {
            setting: "LIFEBOAT_PRE_COMMAND",
            argv: vec!["psql".into(), "password=SECRET".into()],
            timeout: DEFAULT_HOOK_TIMEOUT,
        };
        let shown = format!("{n:?} {h:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("hooks.slack.com") && shown.contains("psql"));
    }
}
