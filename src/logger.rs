//! `env_logger` behind a filter that keeps the webhook key and library noise out of the logs.
//!
//! attohttpc logs the full request URL, key included, at debug level: its records are dropped
//! below info whatever `RUST_LOG` says. may_minihttp logs every ordinary connection close at
//! error level ("service err = read closed"): its records are demoted to debug.

use log::{Level, Log, Metadata, Record};

struct Filtered {
    inner: env_logger::Logger,
}

fn demoted(target: &str, level: Level) -> Option<Level> {
    if target.starts_with("attohttpc") {
        return (level <= Level::Info).then_some(level);
    }
    if target.starts_with("may_minihttp") || target.starts_with("may::") || target == "may" {
        return Some(Level::Debug.max(level));
    }
    Some(level)
}

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata) -> bool {
        match demoted(metadata.target(), metadata.level()) {
            Some(level) => self
                .inner
                .enabled(&Metadata::builder().level(level).target(metadata.target()).build()),
            None => false,
        }
    }

    fn log(&self, record: &Record) {
        let Some(level) = demoted(record.target(), record.level()) else {
            return;
        };
        if level == record.level() {
            if self.inner.matches(record) {
                self.inner.log(record);
            }
            return;
        }
        let rewritten = Record::builder()
            .args(*record.args())
            .level(level)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        if self.inner.matches(&rewritten) {
            self.inner.log(&rewritten);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger: `RUST_LOG` as usual, `info` when unset.
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Filtered { inner })).is_ok() {
        log::set_max_level(max);
    }
}
