//! Which `?key=` values the relay accepts, checked before any robot is made for one.
//!
//! `POST /alertinfo?key=URL` (with `--allow-key-param`) makes the relay POST the alert to that
//! URL. Left open, that is a server-side request forgery: any client could make the relay post
//! to `http://127.0.0.1:…/internal/admin` or any other host and path it can reach. So a `?key=`
//! is either a bare key (letters, digits, `-`, `_`), sent to WeCom, or a URL on one configured
//! host (`--key-param-host`, default WeCom's) with WeCom's robot path and nothing but `key=` in
//! its query. WeCom's own host must be reached over https.
//!
//! Pure: no I/O. Errors never echo the value (it holds the key).

/// WeCom's robot host and path, <https://developer.work.weixin.qq.com/document/path/91770>.
pub const WECOM_HOST: &str = "qyapi.weixin.qq.com";
const SEND_PATH: &str = "/cgi-bin/webhook/send";

/// `--key-param-host`: a host name or address, optionally with a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParamHost {
    host: String,
    /// `None`: any port.
    port: Option<u16>,
}

impl KeyParamHost {
    pub fn parse(text: &str) -> Result<KeyParamHost, String> {
        let text = text.trim();
        let url = url::Url::parse(&format!("http://{text}/"))
            .map_err(|_| "expected HOST or HOST:PORT".to_string())?;
        let host = match url.host_str() {
            Some(h) if !h.is_empty() && url.path() == "/" && url.username().is_empty() => h,
            _ => return Err("expected HOST or HOST:PORT".into()),
        };
        // `url` drops a port that is the scheme's default (80): keep what the user wrote.
        let port = match url.port() {
            Some(p) => Some(p),
            None if text.ends_with(":80") => Some(80),
            None => None,
        };
        Ok(KeyParamHost { host: host.to_ascii_lowercase(), port })
    }

    /// Ok when `value` (the decoded `?key=`) may be used; otherwise why not.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let value = value.trim();
        if !value.contains("://") {
            let bare = !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            return if bare {
                Ok(())
            } else {
                Err("a bare key may only hold letters, digits, '-' and '_'".into())
            };
        }
        let url = url::Url::parse(value).map_err(|_| "not a URL".to_string())?;
        let wecom = self.host == WECOM_HOST;
        match url.scheme() {
            "https" => {}
            "http" if !wecom => {}
            _ => return Err(format!("the URL must be https://{WECOM_HOST}{SEND_PATH}?key=…")),
        }
        let host_ok = url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&self.host))
            && self.port.is_none_or(|p| url.port_or_known_default() == Some(p));
        if !host_ok {
            return Err(format!("the URL must be on {} (--key-param-host)", self.shown()));
        }
        if url.path() != SEND_PATH {
            return Err(format!("the URL's path must be {SEND_PATH}"));
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err("the URL must not carry user:password@ or a #fragment".into());
        }
        let mut keys = 0;
        for (k, v) in url.query_pairs() {
            if k != "key" || v.is_empty() {
                return Err("the URL's query must be key=… and nothing else".into());
            }
            keys += 1;
        }
        if keys != 1 {
            return Err("the URL's query must be key=… and nothing else".into());
        }
        Ok(())
    }

    fn shown(&self) -> String {
        match self.port {
            Some(p) => format!("{}:{p}", self.host),
            None => self.host.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wecom() -> KeyParamHost {
        KeyParamHost::parse(WECOM_HOST).expect("default host")
    }

    #[test]
    fn bare_keys_and_wecom_urls_pass() {
        let h = wecom();
        assert_eq!(h.check("abc-DEF_123"), Ok(()));
        assert_eq!(h.check("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc"), Ok(()));
        assert_eq!(h.check("https://QYAPI.weixin.qq.com:443/cgi-bin/webhook/send?key=a"), Ok(()));
    }

    #[test]
    fn other_hosts_paths_and_schemes_are_refused() {
        let h = wecom();
        for bad in [
            "http://127.0.0.1:18089/internal/admin?key=x",
            "http://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
            "https://qyapi.weixin.qq.com.evil.example/cgi-bin/webhook/send?key=abc",
            "https://evil.example/cgi-bin/webhook/send?key=abc",
            "https://qyapi.weixin.qq.com/cgi-bin/other?key=abc",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send/../../x?key=abc",
            "https://u:p@qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc&url=http://x",
            "https://qyapi.weixin.qq.com/cgi-bin/webhook/send",
            "ftp://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abc",
            "abc def",
            "",
        ] {
            let err = h.check(bad).expect_err(bad);
            assert!(!err.contains("abc") || bad.is_empty(), "{err} echoes the key");
        }
    }

    #[test]
    fn a_configured_host_allows_http_and_pins_the_port_when_given() {
        let any_port = KeyParamHost::parse("127.0.0.1").expect("host");
        assert_eq!(any_port.check("http://127.0.0.1:9/cgi-bin/webhook/send?key=k"), Ok(()));
        let pinned = KeyParamHost::parse("127.0.0.1:8080").expect("host:port");
        assert_eq!(pinned.check("http://127.0.0.1:8080/cgi-bin/webhook/send?key=k"), Ok(()));
        assert!(pinned.check("http://127.0.0.1:8081/cgi-bin/webhook/send?key=k").is_err());
        assert!(pinned.check("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=k").is_err());
        assert!(KeyParamHost::parse("http://x/").is_err());
        assert!(KeyParamHost::parse("").is_err());
    }
}
