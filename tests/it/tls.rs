//! HTTPS to WeCom with an extra CA from `--ca-file`, and refusal without it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::*;

fn openssl(dir: &Path, args: &[&str]) {
    let ok =
        Command::new("openssl").current_dir(dir).args(args).output().map(|o| o.status.success());
    assert_eq!(ok.ok(), Some(true), "openssl {args:?} failed (is openssl installed?)");
}

/// A throwaway CA and a server certificate for 127.0.0.1 signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=weixin-robot test CA",
            "-days",
            "2",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn https_with_test_ca() {
    let dir = TempDir::new("tls");
    make_certs(dir.path());
    let fake = FakeWeCom::start_tls(&dir.path().join("server.pem"), &dir.path().join("server.key"));
    let url = format!("https://127.0.0.1:{}/cgi-bin/webhook/send?key={SECRET}", fake.addr.port());

    // Without the CA: the certificate is refused, the message waits (retryable), nothing lost.
    let untrusting =
        Relay::start(&["--key", &url, "--retry-initial", "50ms", "--retry-max", "200ms"]);
    assert_eq!(untrusting.post(&payload("g", &[A("t0", "firing", "NoCA")])).status, 200);
    wait_until(Duration::from_secs(10), "tls failure logged", || {
        untrusting.logs().contains("will retry")
    });
    assert!(fake.delivered().is_empty());
    drop(untrusting);

    let relay = Relay::start(&[
        "--key",
        &url,
        "--ca-file",
        dir.path().join("ca.pem").to_str().expect("utf8"),
    ]);
    assert_eq!(relay.post(&payload("g", &[A("t1", "firing", "TlsAlert")])).status, 200);
    wait_until(Duration::from_secs(10), "tls delivery", || !fake.delivered().is_empty());
    assert!(fake.delivered()[0].content().contains("TlsAlert"));
    assert!(!relay.logs().contains("plain http"), "https must not warn");
}
