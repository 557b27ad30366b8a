//! What the report says about the machine and the software measured: the cores, CPU, memory and
//! kernel, the OpenSSL, nginx, stunnel and securesock versions (the lines every section opens
//! with), and whether kernel TLS offload is there for the forward section.
//!
//! This module only reads /proc, /etc/os-release and the libssl file, and asks each program for
//! its version; it never starts a server and never changes the machine.

use std::fs;
use std::path::Path;
use std::process::Command;

/// A program's stdout and stderr, or "" when it cannot be run.
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text
        })
        .unwrap_or_default()
}

/// The first "model name" of /proc/cpuinfo ("" on machines that name none).
pub fn cpu_model(cpuinfo: &str) -> &str {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim_end() == "model name").then(|| v.trim_start())
        })
        .unwrap_or("")
}

/// MemTotal of /proc/meminfo in whole GiB ("16 GiB").
pub fn memory(meminfo: &str) -> String {
    let kb = crate::procfs::status_field(meminfo, "MemTotal").unwrap_or(0);
    format!("{:.0} GiB", kb as f64 / 1_048_576.0)
}

/// PRETTY_NAME of an os-release file.
pub fn pretty_name(os_release: &str) -> &str {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=\"")?.strip_suffix('"'))
        .unwrap_or("")
}

/// stunnel's version line ("stunnel 5.68"), without the platform it was built on.
pub fn stunnel_version(version_output: &str) -> &str {
    let line = version_output
        .lines()
        .find(|l| l.starts_with("stunnel"))
        .unwrap_or("");
    line.split_once(" on ").map_or(line, |(v, _)| v)
}

/// The machine and versions lines, markdown list items each ending in a newline. `suite`: the
/// Debian release whose root the run is in ("" for this machine as it is).
pub fn versions(suite: &str, nproc: &str, groups: &str, securesock: &Path) -> String {
    let mut out = String::new();
    if !suite.is_empty() {
        let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
        out.push_str(&format!("- run inside a debootstrap {} root (`scripts/rootfs.sh --suite {suite}`) on the machine below, in its own network namespace (loopback only)\n", pretty_name(&os)));
    }
    let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
    out.push_str(&format!(
        "- machine: {nproc} cores, {}, {}, kernel {}\n",
        cpu_model(&read("/proc/cpuinfo")),
        memory(&read("/proc/meminfo")),
        output("uname", &["-r"]).trim()
    ));
    out.push_str(&format!("- {}\n", output("openssl", &["version"]).trim()));
    let nginx = output("nginx", &["-v"]);
    out.push_str(&format!(
        "- {}, stream module, Debian package {}\n",
        nginx.trim().trim_start_matches("nginx version: "),
        Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "nginx"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "- {}\n",
        stunnel_version(&output("stunnel", &["-version"]))
    ));
    out.push_str(&format!(
        "- {} (release build), securesock-bench {}\n",
        output(&securesock.to_string_lossy(), &["--version"]).trim(),
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(&format!(
        "- key exchange groups: {groups}; certificate: RSA 2048, self-signed (scripts/gen-certs.sh)\n"
    ));
    out
}

/// Whether a file holds `word` as one of its printable strings (what `strings FILE | grep -qx`
/// finds).
pub fn has_string(bytes: &[u8], word: &[u8]) -> bool {
    bytes
        .split(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
        .any(|s| s == word)
}

/// The path of libssl.so.3 in `ldconfig -p`'s list.
pub fn libssl_path(ldconfig: &str) -> Option<&str> {
    ldconfig
        .lines()
        .find(|l| l.contains("libssl.so.3 "))?
        .rsplit(' ')
        .next()
}

/// The kernel TLS offload sentence: whether the kernel offers the `tls` ULP, and whether libssl was
/// built with KTLS.
pub fn ktls() -> String {
    let ulp = fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp");
    let mut text = match &ulp {
        Ok(list) if list.split_whitespace().any(|u| u == "tls") => {
            "the kernel offers the `tls` ULP".to_string()
        }
        _ => {
            let not_set = output("zcat", &["/proc/config.gz"])
                .lines()
                .any(|l| l == "# CONFIG_TLS is not set");
            format!(
                "unavailable: this kernel offers no `tls` ULP (/proc/sys/net/ipv4/tcp_available_ulp: {}{})",
                ulp.as_deref().map_or("none", str::trim_end),
                if not_set {
                    "; CONFIG_TLS is not set"
                } else {
                    ""
                }
            )
        }
    };
    let ldconfig = output("ldconfig", &["-p"]);
    if libssl_path(&ldconfig)
        .and_then(|p| fs::read(p).ok())
        .is_some_and(|b| has_string(&b, b"KTLS"))
    {
        text.push_str("; Debian's libssl3 is built with KTLS");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_memory_and_release_names() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo), "AMD EPYC 7B13");
        assert_eq!(cpu_model("processor : 0\n"), "");
        assert_eq!(memory("MemTotal:       16375580 kB\n"), "16 GiB");
        assert_eq!(memory("MemTotal:        3500000 kB\n"), "3 GiB");
        assert_eq!(
            pretty_name(
                "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\n"
            ),
            "Debian GNU/Linux 13 (trixie)"
        );
    }

    #[test]
    fn stunnel_line_without_its_platform() {
        let out = "stunnel 5.68 on x86_64-pc-linux-gnu platform\nCompiled with OpenSSL 3.0.9\n";
        assert_eq!(stunnel_version(out), "stunnel 5.68");
        assert_eq!(stunnel_version("nothing\n"), "");
    }

    #[test]
    fn ktls_in_libssl_is_a_whole_string() {
        assert!(has_string(b"\x00\x01KTLS\x00more", b"KTLS"));
        assert!(!has_string(b"\x00KTLSX\x00", b"KTLS"));
        let ld = "\tlibssl.so.3 (libc6,x86-64) => /lib/x86_64-linux-gnu/libssl.so.3\n\tlibssl.so (libc6,x86-64) => /x/libssl.so\n";
        assert_eq!(libssl_path(ld), Some("/lib/x86_64-linux-gnu/libssl.so.3"));
    }
}
