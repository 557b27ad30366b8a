//! Reading the configuration file: the one file this floor ever reads.
//!
//! Owns the bounded, regular-file-only read of `--config FILE`, the same rules as `tls`'s
//! `read_bounded` applies to certificates and keys (opened without blocking, the opened
//! descriptor's type and size checked before a byte is read, read with a bound): a FIFO, device or
//! directory named by mistake would otherwise hang start-up or read until memory runs out. It lives
//! here rather than there because `config` is the bottom floor and may import nothing from the
//! crate (and `tls`'s reader speaks `anyhow` and `reason`, which this floor does not); it is
//! twenty lines. Never parses what it reads and never reads any other file.

use std::io::Read;
use std::path::Path;

/// The most bytes a configuration file may hold: 1,000 services of a dozen keys each are about
/// 400 KiB.
pub(super) const MAX_CONFIG_LEN: u64 = 4 * 1024 * 1024;

/// Reads the configuration file whole as UTF-8 text, or says in one line why not.
pub(super) fn read_config(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read configuration file {shown}: {}", reason(&e)))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read configuration file {shown}: {}", reason(&e)))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let is = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "something else"
        };
        return Err(format!(
            "cannot read configuration file {shown}: it is {is}, not a regular file"
        ));
    }
    let too_big = || {
        format!(
            "configuration file {shown} holds more than the {} MiB a configuration file may hold",
            MAX_CONFIG_LEN / (1024 * 1024)
        )
    };
    if meta.len() > MAX_CONFIG_LEN {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the bound tells a file that grew since fstat from one that fits.
    (&file)
        .take(MAX_CONFIG_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read configuration file {shown}: {}", reason(&e)))?;
    if bytes.len() as u64 > MAX_CONFIG_LEN {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(&e.into_bytes()[..at]).into_owned();
        let (line, column) = super::file::line_column(&text, at);
        format!("{shown}:{line}:{column}: the file is not UTF-8 text (TOML files are)")
    })
}

/// An I/O error as the reason alone ("No such file or directory"), without Rust's "(os error 2)".
fn reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bounded_regular_utf8_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let missing = read_config(&dir.path().join("none.toml")).unwrap_err();
        assert!(missing.ends_with("No such file or directory"), "{missing}");
        let is_dir = read_config(dir.path()).unwrap_err();
        assert!(is_dir.contains("it is a directory"), "{is_dir}");
        let device = read_config(Path::new("/dev/zero")).unwrap_err();
        assert!(device.contains("it is a device"), "{device}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_LEN as usize + 1]).unwrap();
        assert!(
            read_config(&big)
                .unwrap_err()
                .contains("more than the 4 MiB")
        );
        let latin1 = dir.path().join("latin1.toml");
        std::fs::write(&latin1, b"# ok\ngreeting = \"caf\xe9\"\n").unwrap();
        let err = read_config(&latin1).unwrap_err();
        assert!(
            err.contains("latin1.toml:2:16: the file is not UTF-8"),
            "{err}"
        );
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "[process]\n").unwrap();
        assert_eq!(read_config(&good).unwrap(), "[process]\n");
    }
}
