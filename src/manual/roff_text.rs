//! Small pieces both pages are written with: a section of paragraphs, a term and its text, a
//! literal block. Owns nothing but roff layout; never decides what a page says.

use clap_mangen::roff::{Inline, Roff, bold, roman};

/// `.SH TITLE` and each paragraph as its own `.PP`.
pub(super) fn section(roff: &mut Roff, title: &str, paragraphs: &[&str]) {
    roff.control("SH", [title]);
    for (i, paragraph) in paragraphs.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*paragraph)]);
    }
}

/// A `.TP` entry: the term in bold, then its text.
pub(super) fn term(roff: &mut Roff, term: &str, text: &str) {
    term_with(roff, vec![bold(term)], text);
}

/// A `.TP` entry with a term of several inlines (bold and italic parts).
pub(super) fn term_with(roff: &mut Roff, term: Vec<Inline>, text: &str) {
    roff.control("TP", []);
    roff.text(term);
    roff.text([roman(text)]);
}

/// A block printed as it stands, line for line (an example file, a command).
pub(super) fn literal(roff: &mut Roff, text: &str) {
    roff.control("PP", []);
    roff.control("nf", []);
    roff.control("RS", ["4"]);
    for line in text.lines() {
        roff.text([roman(line)]);
    }
    roff.control("RE", []);
    roff.control("fi", []);
}
