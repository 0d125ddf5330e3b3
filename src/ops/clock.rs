//! Wall-clock time as tokens and logs use it: whole Unix seconds, written
//! as RFC 3339 UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Latest time written as a date, and the latest `exp` or `nbf` a token
/// may carry: the end of the year 9999.
pub const MAX_EXP: u64 = 253_402_300_799;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats a time since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn fmt_unix_millis(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    if secs > MAX_EXP {
        return fmt_unix(secs);
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + since_epoch).to_string()
}

/// Formats Unix seconds as RFC 3339 UTC (or as plain seconds past the
/// year 9999, which RFC 3339 cannot write).
pub fn fmt_unix(secs: u64) -> String {
    if secs > MAX_EXP {
        return format!("{secs} seconds after 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
