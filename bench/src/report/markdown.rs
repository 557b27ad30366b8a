//! A BENCHMARKS.md made of sections between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`
//! markers: replacing one section leaves every other line as it was.

/// What a new BENCHMARKS.md starts with.
const HEADER: &str = "# Benchmarks\n\nWritten by `scripts/bench.sh --write`; each section is replaced when its part is run again with `--write`.\n";

/// `md` (None: the file does not exist yet) with section `name` holding `body`; the section is
/// appended when it is not there yet.
pub fn replace_section(md: Option<&str>, name: &str, body: &str) -> String {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let md = md.unwrap_or(HEADER);
    let mut body_lines = String::new();
    for line in body.lines() {
        body_lines.push_str(line);
        body_lines.push('\n');
    }
    if !md.lines().any(|l| l == begin) {
        return format!("{md}\n{begin}\n{body_lines}{end}\n");
    }
    let mut out = String::new();
    let mut skip = false;
    let mut placed = false;
    for line in md.lines() {
        if line == begin {
            out.push_str(line);
            out.push('\n');
            if !placed {
                out.push_str(&body_lines);
                placed = true;
            }
            skip = true;
            continue;
        }
        if line == end {
            skip = false;
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place() {
        let md = "# B\n\n<!-- bench:a:begin -->\nold a\n<!-- bench:a:end -->\n\n<!-- bench:b:begin -->\nold b\n<!-- bench:b:end -->\n";
        assert_eq!(
            replace_section(Some(md), "a", "new a\nline 2\n"),
            "# B\n\n<!-- bench:a:begin -->\nnew a\nline 2\n<!-- bench:a:end -->\n\n<!-- bench:b:begin -->\nold b\n<!-- bench:b:end -->\n"
        );
    }

    #[test]
    fn a_missing_section_is_appended_and_a_missing_file_made() {
        assert_eq!(
            replace_section(Some("# B\n"), "c", "c\n"),
            "# B\n\n<!-- bench:c:begin -->\nc\n<!-- bench:c:end -->\n"
        );
        let new = replace_section(None, "c", "c\n");
        assert!(new.starts_with("# Benchmarks\n\nWritten by `scripts/bench.sh --write`"));
        assert!(new.ends_with("--write`.\n\n<!-- bench:c:begin -->\nc\n<!-- bench:c:end -->\n"));
    }
}
