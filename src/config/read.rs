//! Reading the configuration file: the one file this floor ever reads.
//!
//! Owns the bounded, regular-file-only read of every file securesock reads: [`open_regular`] and
//! [`read_capped`] (opened without blocking, the opened descriptor's type and size checked before
//! a byte is read, read with a bound: a FIFO, device or directory named by mistake would otherwise
//! hang start-up or read until memory runs out), used here for `--config FILE` and by `tls`'s
//! `read_bounded` for certificates, keys, CAs, CRLs, OCSP responses and ticket keys, which adds
//! its mode rules and words its own errors. It lives on the bottom floor so both can use it.
//! Never parses what it reads.

use std::io::Read;
use std::path::Path;

/// The most bytes a configuration file may hold: 1,000 services of a dozen keys each are about
/// 400 KiB.
pub(super) const MAX_CONFIG_LEN: u64 = 4 * 1024 * 1024;

/// Why [`open_regular`] or [`read_capped`] refused a file, for the caller to word.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Opening, fstat or reading failed.
    Io(std::io::Error),
    /// The opened descriptor is not a regular file: what it is ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// More bytes than the bound (at fstat, or read past it since).
    TooBig,
}

/// Opens `path` without blocking (a FIFO opens at once instead of waiting for a writer) and
/// checks the descriptor it opened, not the path, so what is checked is what is read: it must be
/// a regular file of at most `max` bytes. A symlink is followed; its target is what gets checked.
/// The one open of every file securesock reads, configuration and certificates alike.
pub(crate) fn open_regular(
    path: &Path,
    max: u64,
) -> Result<(std::fs::File, std::fs::Metadata), Refused> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Refused::Io)?;
    let meta = file.metadata().map_err(Refused::Io)?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(Refused::NotRegular(if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    if meta.len() > max {
        return Err(Refused::TooBig);
    }
    Ok((file, meta))
}

/// Reads what [`open_regular`] opened, whole, refusing more than `max` bytes.
pub(crate) fn read_capped(
    file: &std::fs::File,
    meta: &std::fs::Metadata,
    max: u64,
) -> Result<Vec<u8>, Refused> {
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the bound tells a file that grew since fstat from one that fits.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(Refused::Io)?;
    if bytes.len() as u64 > max {
        return Err(Refused::TooBig);
    }
    Ok(bytes)
}

/// Reads the configuration file whole as UTF-8 text, or says in one line why not.
pub(crate) fn read_config(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let refused = |r: Refused| match r {
        Refused::Io(e) => format!("cannot read configuration file {shown}: {}", reason(&e)),
        Refused::NotRegular(is) => {
            format!("cannot read configuration file {shown}: it is {is}, not a regular file")
        }
        Refused::TooBig => format!(
            "configuration file {shown} holds more than the {} MiB a configuration file may hold",
            MAX_CONFIG_LEN / (1024 * 1024)
        ),
    };
    let (file, meta) = open_regular(path, MAX_CONFIG_LEN).map_err(refused)?;
    let bytes = read_capped(&file, &meta, MAX_CONFIG_LEN).map_err(refused)?;
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
