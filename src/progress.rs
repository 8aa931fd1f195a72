//! Progress of long commands on stderr: an indicatif bar or spinner when stderr is a terminal,
//! otherwise one plain line each time the progress changes (so logs of scripted runs show it).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Smaller transfers show no plain progress lines: they end before anyone reads them.
pub const PLAIN_BYTES_MIN: u64 = 8 << 20;

pub struct Progress {
    bar: Option<ProgressBar>,
    last: Mutex<String>,
}

impl Progress {
    fn new(bar: impl FnOnce() -> ProgressBar) -> Progress {
        Progress {
            bar: std::io::stderr().is_terminal().then(bar),
            last: Mutex::new(String::new()),
        }
    }

    /// Work of unknown size: a spinner with a message.
    pub fn spinner() -> Progress {
        Progress::new(|| {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    /// `len` steps of `unit`.
    pub fn bar(len: u64, unit: &str) -> Progress {
        let template = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{elapsed}} {{msg}}");
        Progress::new(|| {
            let bar = ProgressBar::new(len);
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style);
            }
            bar
        })
    }

    /// `len` bytes; plain output notes every tenth of the way of a transfer of at least
    /// [`PLAIN_BYTES_MIN`] (see [`Progress::bytes_at`]).
    pub fn bytes(len: u64) -> Progress {
        Progress::new(|| {
            let bar = ProgressBar::new(len);
            let template = "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed} {msg}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        })
    }

    /// `done` of `len` bytes of `what` are through.
    pub fn bytes_at(&self, what: &str, done: u64, len: u64) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if len < PLAIN_BYTES_MIN => {}
            None => {
                let tenths = (done.saturating_mul(10) / len.max(1)).min(10);
                self.note(format!(
                    "{what}: {}% of {} KiB",
                    tenths * 10,
                    len.div_ceil(1024)
                ));
            }
        }
    }

    /// What is happening now; a plain line only when it changed.
    pub fn note(&self, message: String) {
        match &self.bar {
            Some(bar) => bar.set_message(message),
            None => {
                let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
                if *last != message {
                    eprintln!("metakv: {message}");
                    *last = message;
                }
            }
        }
    }

    /// `n` more steps done (a bar only; plain output reports through `note`).
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
