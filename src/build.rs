//! Facts about this build, recorded by `build.rs`.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const TARGET: &str = env!("WEIXIN_ROBOT_TARGET");
pub const GIT_REVISION: &str = env!("WEIXIN_ROBOT_GIT_REVISION");

/// `weixin-robot 1.0.0 (x86_64-unknown-linux-musl, rev 0123abcd)`.
pub fn version_line() -> String {
    format!("weixin-robot {VERSION} ({TARGET}, rev {GIT_REVISION})")
}
