//! Identifiers: the grammar of host ids, host patterns and key ids, each
//! with one checker and one error text wherever an id is read.

use thiserror::Error;

/// Longest host id (and host pattern) accepted.
pub const MAX_HOST_ID_LEN: usize = 64;

/// Longest key id accepted, in flags, settings files and tokens.
pub const MAX_KID_LEN: usize = 64;

/// Why a string is not the identifier asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadId {
    /// Not a host id.
    #[error(
        "not a host id (1 to {MAX_HOST_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter, digit or '_')"
    )]
    HostId,
    /// Neither a host id nor a pattern of one.
    #[error(
        "not a host id or pattern (1 to {MAX_HOST_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter, digit or '_', and a pattern may use '*' and '?')"
    )]
    HostPattern,
    /// Not a key id.
    #[error(
        "not a key id (1 to {MAX_KID_LEN} letters, digits, '.', '_' or '-', starting with a letter, digit or '_')"
    )]
    Kid,
}

/// `s` if it is a host id (see [`valid_host_id`]).
pub fn host_id(s: &str) -> Result<&str, BadId> {
    valid_host_id(s).then_some(s).ok_or(BadId::HostId)
}

/// `s` if it is a host id or a pattern of one (see [`valid_host_pattern`]).
pub fn host_pattern(s: &str) -> Result<&str, BadId> {
    valid_host_pattern(s).then_some(s).ok_or(BadId::HostPattern)
}

/// `s` if it is a key id (see [`valid_kid`]).
pub fn kid(s: &str) -> Result<&str, BadId> {
    valid_kid(s).then_some(s).ok_or(BadId::Kid)
}

/// Whether `id` is a valid host id: 1 to [`MAX_HOST_ID_LEN`] ASCII letters,
/// digits, `.`, `_` or `-`, the first a letter, digit or `_` (so never `.`,
/// `..`, a hidden file or something that reads as a flag), so that ids are
/// safe in logs, file names, command lines and ssh configuration.
pub fn valid_host_id(id: &str) -> bool {
    within(id, MAX_HOST_ID_LEN, b"._-")
}

/// Whether `pattern` is a host id or a pattern of one: the characters of a
/// host id plus `*` and `?`, at most [`MAX_HOST_ID_LEN`] long, not starting
/// with `.` or `-`.
pub fn valid_host_pattern(pattern: &str) -> bool {
    within(pattern, MAX_HOST_ID_LEN, b"._-*?")
}

/// Whether `kid` is a usable key id: 1 to [`MAX_KID_LEN`] ASCII letters,
/// digits, `.`, `_` or `-` (the same rule as host ids, so ids are safe in
/// logs and config files).
pub fn valid_kid(kid: &str) -> bool {
    within(kid, MAX_KID_LEN, b"._-")
}

/// Whether `s` is 1 to `max` bytes of ASCII letters, digits and `extra`,
/// not starting with `.` or `-`.
fn within(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// Whether `id` matches `pattern`, where `*` stands for any run of
/// characters and `?` for any one.
pub fn glob_match(pattern: &str, id: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), id.as_bytes());
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and how much of `s` it has taken so far.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The host id in `name`, ssh's name for a host that adds `suffix` to it
/// (`lab1.shellrelay`): `name` without `suffix`, which ends it in any case
/// (ssh lowercases names), if the rest is a host id.
pub fn host_id_before<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    let at = name.len().checked_sub(suffix.len())?;
    let (id, tail) = (name.get(..at)?, name.get(at..)?);
    (tail.eq_ignore_ascii_case(suffix) && valid_host_id(id)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suffix_comes_off_a_name_that_ends_with_it() {
        assert_eq!(
            host_id_before("lab1.shellrelay", ".shellrelay"),
            Some("lab1")
        );
        assert_eq!(
            host_id_before("Lab1.SHELLRELAY", ".shellrelay"),
            Some("Lab1")
        );
        for bad in ["lab1", "lab1.example", ".shellrelay", "-x.shellrelay", "ay"] {
            assert_eq!(host_id_before(bad, ".shellrelay"), None, "{bad:?}");
        }
    }

    #[test]
    fn each_checker_gives_its_one_error() {
        assert_eq!(host_id("lab-1.example_2"), Ok("lab-1.example_2"));
        for bad in ["", "a b", "lab\nforged", "ünï", "lab-*", &"x".repeat(65)] {
            assert_eq!(host_id(bad), Err(BadId::HostId), "{bad:?}");
        }
        // Nothing that is a path of its own or reads as a flag.
        for bad in [".", "..", ".hidden", "-rf", "--help"] {
            assert_eq!(host_id(bad), Err(BadId::HostId), "{bad:?}");
            assert_eq!(host_pattern(bad), Err(BadId::HostPattern), "{bad:?}");
            assert_eq!(kid(bad), Err(BadId::Kid), "{bad:?}");
        }
        assert_eq!(host_id("_lab.1"), Ok("_lab.1"));
        assert_eq!(host_pattern("lab-*"), Ok("lab-*"));
        assert_eq!(host_pattern("*-db"), Ok("*-db"));
        assert_eq!(host_pattern("a b"), Err(BadId::HostPattern));
        assert_eq!(kid("2026-11"), Ok("2026-11"));
        assert_eq!(kid("a=b"), Err(BadId::Kid));
        assert_eq!(
            BadId::HostId.to_string(),
            "not a host id (1 to 64 letters, digits, '.', '_' or '-', starting with a letter, digit or '_')"
        );
    }

    #[test]
    fn patterns_match_by_star_and_question_mark() {
        assert!(glob_match("lab-*", "lab-1"));
        assert!(glob_match("db?", "db1"));
        assert!(!glob_match("db?", "db12"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("lab", "lab1"));
    }
}
