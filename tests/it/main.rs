//! Integration tests: the real binary over real sockets, one module per area.
//! Tests that need a real Alertmanager are `#[ignore]`d so a bare `cargo test` stays quick;
//! `ci/test.sh` (the README's test command) installs it and runs them with `--include-ignored`.

mod alertmanager_e2e;
mod cli;
mod delivery;
mod hardening;
mod hostile;
mod intake;
mod messages;
mod operability;
mod outbox;
mod outbox_ha;
mod routing;
mod smoke;
mod spool;
mod storm;
mod storm_fix;
mod tls;
mod util;
