//! `securesock import-stunnel FILE`: a stunnel.conf turned into the equivalent securesock file
//! (TOML, keys the long flags' names), and the list of what could not be carried.
//!
//! Owns stunnel 5's syntax and meaning as its manual (stunnel.8) and its option parser
//! (src/options.c) define them: `;`/`#` comments, `[service]` sections, `option = value` lines with
//! names matched without regard to case, a UTF-8 byte order mark on a file's first line, global
//! options only before the first section, service-level options there as every service's
//! defaults, and `include = DIRECTORY` reading every regular file in it in name order, in place.
//! Pure: text in, TOML text and [`Finding`]s out; the only I/O is reading the file and the
//! directories its `include` lines name, through [`Files`], bounded ([`MAX_FILE_BYTES`],
//! [`MAX_FILES`], [`MAX_INCLUDE_DEPTH`]). Never prints, never checks a certificate or resolves a
//! name (`securesock check` does that on the result), and imports nothing from the crate above
//! `config`.
//!
//! The rooms: this file reads the lines; `service.rs` replays them as stunnel does into one
//! service's settings; `render.rs` turns those into securesock's keys; `toml_text.rs` writes them.

mod render;
mod service;
mod toml_text;

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

/// The largest file read (stunnel.conf or one included file).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// The most files read in all, the first one included.
pub const MAX_FILES: usize = 256;
/// How deep `include` may nest (stunnel has no limit: a directory that includes itself loops).
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Where the converter reads from: the disk ([`Disk`]) or, in tests, a map of texts.
pub trait Files {
    /// A file's whole text (a file of more than [`MAX_FILE_BYTES`] is an error).
    fn read(&mut self, path: &Path) -> io::Result<String>;
    /// The regular files in a directory (symbolic links followed, as stunnel's stat does), in any
    /// order.
    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// [`Files`] on the file system.
pub struct Disk;

impl Files for Disk {
    fn read(&mut self, path: &Path) -> io::Result<String> {
        let mut bytes = Vec::new();
        fs::File::open(path)?
            .take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io::Error::other(format!(
                "larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        // stunnel reads bytes; a path in Latin-1 is still shown, replaced characters and all.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn list(&mut self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                files.push(path);
            }
            if files.len() > MAX_FILES {
                break;
            }
        }
        Ok(files)
    }
}

/// A file that cannot be read, or a line stunnel itself would refuse: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(pub String);

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

/// One thing the import says about a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `FILE:LINE`.
    pub at: String,
    /// The stunnel option (or `[section]`) it is about.
    pub option: String,
    /// Why, in a sentence.
    pub why: String,
    /// Left out of the TOML (exit code 3); otherwise a note on a meaning that changes.
    pub left_out: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.left_out {
            write!(f, "{}: {} not carried: {}", self.at, self.option, self.why)
        } else {
            write!(f, "{}: note: {}: {}", self.at, self.option, self.why)
        }
    }
}

/// The result: the TOML text and what was said about the lines, in line order.
#[derive(Debug, Clone)]
pub struct Import {
    pub toml: String,
    pub findings: Vec<Finding>,
}

impl Import {
    /// Whether every option was carried (exit code 0 rather than 3).
    pub fn complete(&self) -> bool {
        !self.findings.iter().any(|f| f.left_out)
    }
}

/// Where a line came from: the index of its file in the files read, and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct At {
    file: usize,
    line: usize,
}

/// An `option = value` line.
#[derive(Debug, Clone)]
struct Opt {
    key: String,
    value: String,
    at: At,
}

/// A `[name]` line and the options after it.
#[derive(Debug, Clone)]
struct Section {
    name: String,
    at: At,
    options: Vec<Opt>,
}

/// The file as stunnel sees it once every `include` is read: the lines before the first section
/// and the sections in order.
#[derive(Debug, Default)]
struct Parsed {
    paths: Vec<PathBuf>,
    global: Vec<Opt>,
    sections: Vec<Section>,
}

impl Parsed {
    fn at(&self, at: At) -> String {
        format!("{}:{}", self.paths[at.file].display(), at.line)
    }

    fn push(&mut self, opt: Opt) {
        match self.sections.last_mut() {
            Some(section) => section.options.push(opt),
            None => self.global.push(opt),
        }
    }
}

/// Reads `path` (and what it includes) from the disk and converts it.
pub fn import_file(path: &Path) -> Result<Import, ImportError> {
    import(path, &mut Disk)
}

/// Reads `path` (and what it includes) through `files` and converts it.
pub fn import(path: &Path, files: &mut impl Files) -> Result<Import, ImportError> {
    let mut parsed = Parsed::default();
    read(files, path, 0, &mut parsed)?;
    render::convert(&parsed)
}

/// Reads one file's lines into `parsed`, an `include` directory's files in place.
fn read(
    files: &mut impl Files,
    path: &Path,
    depth: usize,
    parsed: &mut Parsed,
) -> Result<(), ImportError> {
    if parsed.paths.len() >= MAX_FILES {
        return Err(ImportError(format!(
            "{}: more than {MAX_FILES} files to read (include)",
            path.display()
        )));
    }
    let text = files
        .read(path)
        .map_err(|e| ImportError(format!("{}: cannot read: {e}", path.display())))?;
    let file = parsed.paths.len();
    parsed.paths.push(path.to_path_buf());
    for (index, raw) in text.lines().enumerate() {
        let at = At {
            file,
            line: index + 1,
        };
        let raw = if index == 0 {
            raw.strip_prefix('\u{feff}').unwrap_or(raw)
        } else {
            raw
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            parsed.sections.push(Section {
                name: name.to_string(),
                at,
                options: Vec::new(),
            });
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ImportError(format!(
                "{}: \"{line}\": no '=' found",
                parsed.at(at)
            )));
        };
        let (key, value) = (key.trim_end(), value.trim_start());
        if key.eq_ignore_ascii_case("include") {
            include(files, Path::new(value), depth, parsed, at)?;
            continue;
        }
        parsed.push(Opt {
            key: key.to_string(),
            value: value.to_string(),
            at,
        });
    }
    Ok(())
}

/// `include = DIRECTORY`: every regular file in it, in ascending order of name, as if its lines
/// stood here (a file may go on with the current section or start new ones).
fn include(
    files: &mut impl Files,
    dir: &Path,
    depth: usize,
    parsed: &mut Parsed,
    at: At,
) -> Result<(), ImportError> {
    if depth >= MAX_INCLUDE_DEPTH {
        return Err(ImportError(format!(
            "{}: include nested more than {MAX_INCLUDE_DEPTH} deep",
            parsed.at(at)
        )));
    }
    let mut entries = files.list(dir).map_err(|e| {
        ImportError(format!(
            "{}: include: cannot read directory {}: {e}",
            parsed.at(at),
            dir.display()
        ))
    })?;
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    for entry in entries {
        read(files, &entry, depth + 1, parsed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
