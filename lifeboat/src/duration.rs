//! Durations as settings write them: `90`, `90s`, `5m`, `1h`, `2d`.
//! Used by the settings and by the chain plan, so it depends on neither.

use std::time::Duration;

/// The longest duration any setting takes. Longer ones are mistakes (a
/// number of milliseconds, a copied `u64::MAX`), and adding them to a clock
/// would overflow it.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 86400);

/// The form a setting takes, in the largest whole unit: `7d`, `36h`, `90s`;
/// [`parse_duration`] reads it back to the same value.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = [(86400, "d"), (3600, "h"), (60, "m")]
        .into_iter()
        .find(|(u, _)| s.is_multiple_of(*u))
        .map_or((s, "s"), |(u, name)| (s / u, name));
    format!("{n}{unit}")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_duration_reads_back_the_same() {
        for secs in [0, 1, 90, 300, 3600, 5400, 36 * 3600, 7 * 86400] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
    }
}
