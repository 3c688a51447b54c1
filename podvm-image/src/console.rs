//! The serial console, captured line by line with the time since QEMU started, kept in memory
//! for the test and written to a file (`[   12.345] text`).

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One console line.
#[derive(Debug, Clone)]
pub struct ConsoleLine {
    /// Time since QEMU was started.
    pub at: Duration,
    /// The text, without terminal escape sequences or carriage returns.
    pub text: String,
}

/// The console of a running VM.
#[derive(Debug, Clone)]
pub struct Console {
    lines: Arc<Mutex<Vec<ConsoleLine>>>,
    path: PathBuf,
}

impl Console {
    /// Starts reading `source` on a thread; lines go to memory and to `path`.
    pub(crate) fn capture(
        source: impl Read + Send + 'static,
        started: Instant,
        path: &Path,
    ) -> std::io::Result<Self> {
        let mut file = std::fs::File::create(path)?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(source);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = started.elapsed();
                let text = clean(&String::from_utf8_lossy(&raw));
                let _ = writeln!(file, "[{:9.3}] {text}", at.as_secs_f64());
                if let Ok(mut l) = sink.lock() {
                    l.push(ConsoleLine { at, text });
                }
            }
            let _ = file.flush();
        });
        Ok(Self {
            lines,
            path: path.to_path_buf(),
        })
    }

    /// The file the console is written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<ConsoleLine> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<ConsoleLine> {
        self.lines
            .lock()
            .ok()?
            .iter()
            .find(|l| l.text.contains(needle))
            .cloned()
    }

    /// The last `n` lines, timestamped, as one string.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        let from = lines.len().saturating_sub(n);
        lines[from..]
            .iter()
            .map(|l| format!("[{:9.3}] {}", l.at.as_secs_f64(), l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Drops ANSI escape sequences (systemd colours its status) and control characters.
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c.is_control() && c != '\t' {
            continue;
        }
        out.push(c);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_carriage_returns_are_dropped() {
        assert_eq!(
            clean("[\u{1b}[0;32m  OK  \u{1b}[0m] Started x.\r\n"),
            "[  OK  ] Started x."
        );
    }

    #[test]
    fn lines_are_captured_with_times_and_written() {
        let dir = std::env::temp_dir().join(format!("podvm-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("console.log");
        let console =
            Console::capture(&b"one\r\ntwo\n"[..], Instant::now(), &path).expect("capture");
        let deadline = Instant::now() + Duration::from_secs(5);
        while console.lines().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(console.find("two").map(|l| l.text), Some("two".to_string()));
        std::thread::sleep(Duration::from_millis(50));
        let file = std::fs::read_to_string(&path).expect("file");
        assert!(
            file.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with('[') && l.ends_with("] two")),
            "{file}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
