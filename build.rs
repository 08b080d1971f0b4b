//! Records the target triple and git revision for `--version` and `weixin_robot_build_info`.
//! `WEIXIN_ROBOT_GIT_REVISION` overrides git (release builds from a tarball have no .git).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=WEIXIN_ROBOT_GIT_REVISION");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let revision =
        std::env::var("WEIXIN_ROBOT_GIT_REVISION").ok().filter(|r| !r.is_empty()).or_else(|| {
            let out =
                Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
            let rev = String::from_utf8(out.stdout).ok()?.trim().to_string();
            let dirty = Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            (out.status.success() && !rev.is_empty()).then(|| {
                if dirty {
                    format!("{rev}-dirty")
                } else {
                    rev
                }
            })
        });
    // The static x86_64 binary copies small sizes itself (src/memcpy.rs): `--wrap=memcpy` sends
    // every memcpy call to `__wrap_memcpy`. Given here rather than in .cargo/config.toml so it
    // reaches this package's binary only (tests and benches built for the target do not define
    // the symbol), holds when RUSTFLAGS replaces the config's flags, and comes with the cfg
    // that compiles the wrapper: never one without the other. Optimised builds only: unoptimised
    // code may turn the wrapper's fixed-size loads back into memcpy calls.
    println!("cargo::rustc-check-cfg=cfg(wrap_memcpy)");
    println!("cargo:rerun-if-env-changed=OPT_LEVEL");
    let optimised = std::env::var("OPT_LEVEL").is_ok_and(|level| level != "0");
    if target == "x86_64-unknown-linux-musl" && optimised {
        println!("cargo:rustc-cfg=wrap_memcpy");
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=memcpy");
    }
    println!("cargo:rustc-env=WEIXIN_ROBOT_TARGET={target}");
    println!(
        "cargo:rustc-env=WEIXIN_ROBOT_GIT_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}
