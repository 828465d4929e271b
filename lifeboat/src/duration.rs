//! Durations as settings write them: `90`, `90s`, `5m`, `1h`, `2d`.
//! Used by the settings and by the chain plan, so it depends on neither.

use std::time::Duration;

/// The longest duration any setting takes. Longer ones are mistakes (a
/// number of milliseconds, a copied `u64::MAX`), and adding them to a clock
/// would overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86400);

/// `90`, `90s`, `5m`, `1h`, `2d`; at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const ACCEPTED: &str = "accepted: a whole number of seconds, or with a unit: 30s, 5m, 1h, 2d";
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        Some((i, 'd')) => (&t[..i], 86400),
        _ => (t, 1),
    };
    let n = num
        .trim()
        .parse::<u64>()
        .map_err(|_| ACCEPTED.to_string())?;
    match n.checked_mul(mult).map(Duration::from_secs) {
        Some(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "longer than {}d, the most any duration setting takes; {ACCEPTED}",
            MAX_DURATION.as_secs() / 86400
        )),
    }
}
