//! Optional inbound authentication for `/alertinfo` and `/metrics`, matching what
//! Alertmanager's `http_config` can send: `authorization` (bearer token, from
//! `--auth-token-file`) and `basic_auth` (from `--basic-auth-file`, one `user:password` per
//! line). Health and readiness endpoints stay open for probes.
//!
//! Comparisons run in constant time over the longest candidate so response timing does not
//! reveal how much of a guess was right.

use std::path::Path;

pub struct Auth {
    /// `Bearer <token>` as the whole expected header value.
    bearer: Option<Vec<u8>>,
    /// `Basic <base64(user:password)>` for every allowed pair.
    basic: Vec<Vec<u8>>,
}

impl Auth {
    /// Reads the files; `Ok(None)` when neither is given. Errors never quote file contents.
    pub fn load(
        token_file: Option<&Path>,
        basic_file: Option<&Path>,
    ) -> Result<Option<Auth>, String> {
        if token_file.is_none() && basic_file.is_none() {
            return Ok(None);
        }
        let read = |p: &Path, flag: &str| {
            std::fs::read_to_string(p).map_err(|e| format!("reading {flag} {}: {e}", p.display()))
        };
        let bearer = match token_file {
            Some(p) => {
                let token = read(p, "--auth-token-file")?.trim().to_string();
                if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(format!(
                        "--auth-token-file {}: expected one token on one line",
                        p.display()
                    ));
                }
                Some(format!("Bearer {token}").into_bytes())
            }
            None => None,
        };
        let mut basic = Vec::new();
        if let Some(p) = basic_file {
            for (n, line) in read(p, "--basic-auth-file")?.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                match line.split_once(':') {
                    Some((user, pass)) if !user.is_empty() && !pass.is_empty() => {
                        basic.push(format!("Basic {}", base64(line.as_bytes())).into_bytes());
                    }
                    _ => {
                        return Err(format!(
                            "--basic-auth-file {} line {}: expected user:password",
                            p.display(),
                            n + 1
                        ))
                    }
                }
            }
            if basic.is_empty() {
                return Err(format!("--basic-auth-file {}: no user:password lines", p.display()));
            }
        }
        Ok(Some(Auth { bearer, basic }))
    }

    /// Whether the `Authorization` header value grants access.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else { return false };
        let value = trim(value);
        // Check every candidate, without stopping early, so timing says nothing about which.
        let mut ok = false;
        if let Some(b) = &self.bearer {
            ok |= scheme_eq(value, b);
        }
        for b in &self.basic {
            ok |= scheme_eq(value, b);
        }
        ok
    }

    /// The `WWW-Authenticate` header for a 401 (as a header list for may_minihttp).
    pub fn challenge(&self) -> &'static [&'static str] {
        match (self.bearer.is_some(), !self.basic.is_empty()) {
            (true, true) => {
                &["WWW-Authenticate: Basic realm=\"weixin-robot\", Bearer realm=\"weixin-robot\""]
            }
            (true, false) => &["WWW-Authenticate: Bearer realm=\"weixin-robot\""],
            _ => &["WWW-Authenticate: Basic realm=\"weixin-robot\""],
        }
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &v[start..end]
}

/// The scheme word is case-insensitive (RFC 9110); the credentials are compared exactly.
fn scheme_eq(got: &[u8], want: &[u8]) -> bool {
    let split = want.iter().position(|&b| b == b' ').unwrap_or(want.len());
    let (want_scheme, want_rest) = want.split_at(split);
    let got_split = got.iter().position(|&b| b == b' ').unwrap_or(got.len());
    let (got_scheme, got_rest) = got.split_at(got_split);
    got_scheme.eq_ignore_ascii_case(want_scheme) & constant_time_eq(got_rest, want_rest)
}

/// Compares without an early exit; the length difference is folded into the result.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// Standard base64 with padding; a dozen lines rather than a dependency.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("alertmanager:s3cret", "YWxlcnRtYW5hZ2VyOnMzY3JldA=="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn bearer_and_basic() {
        let auth = Auth {
            bearer: Some(b"Bearer tok123".to_vec()),
            basic: vec![format!("Basic {}", base64(b"am:pw")).into_bytes()],
        };
        assert!(auth.allows(Some(b"Bearer tok123")));
        assert!(auth.allows(Some(b"bearer tok123 ")));
        assert!(!auth.allows(Some(b"Bearer tok124")));
        assert!(!auth.allows(Some(b"Bearer tok12")));
        assert!(auth.allows(Some(format!("Basic {}", base64(b"am:pw")).as_bytes())));
        assert!(!auth.allows(Some(format!("Basic {}", base64(b"am:px")).as_bytes())));
        assert!(!auth.allows(None));
    }
}
