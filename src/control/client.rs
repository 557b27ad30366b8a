//! `securesock ctl`: one request to a running server's control socket, its answer on stdout, and
//! an exit code: 0 when the answer ends `ok`, 1 when it ends `error MESSAGE` (the message on
//! stderr), 2 when there is no server to ask (the socket cannot be reached, or it refused us).
//!
//! Owns turning a [`CtlCommand`] into the protocol's request line; never interprets an answer
//! beyond its last line, so the server alone decides what it says.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::config::CtlCommand;

/// How long an answer may take: a reload of many services takes seconds.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The request line for `command`, without its newline; refuses a value that would break the
/// line.
pub fn request_line(command: &CtlCommand) -> Result<String, String> {
    let line = match command {
        CtlCommand::Connections { service, json } => {
            let mut line = "connections".to_string();
            if let Some(service) = service {
                line.push_str(&format!(" --service {service}"));
            }
            if *json {
                line.push_str(" --json");
            }
            line
        }
        CtlCommand::Close {
            ids,
            identity,
            peer,
        } => match (identity, peer) {
            (Some(identity), _) => format!("close --identity {identity}"),
            (None, Some(peer)) => format!("close --peer {peer}"),
            (None, None) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                format!("close {}", ids.join(" "))
            }
        },
        CtlCommand::Status { json: true } => "status --json".into(),
        CtlCommand::Status { json: false } => "status".into(),
        CtlCommand::Reload => "reload".into(),
    };
    if line.contains(['\n', '\r']) {
        return Err("a value holds a line break".into());
    }
    Ok(line)
}

/// Asks, prints the answer, and returns the exit code.
pub fn run(socket: &Path, command: &CtlCommand) -> u8 {
    let line = match request_line(command) {
        Ok(line) => line,
        Err(why) => return fail(2, &why),
    };
    match ask(socket, &line) {
        Ok(Answer { lines, verdict }) => {
            let mut stdout = io::stdout().lock();
            for line in &lines {
                let _ = writeln!(stdout, "{line}");
            }
            let _ = stdout.flush();
            match verdict {
                Verdict::Ok => 0,
                Verdict::Error(why) if why.starts_with("permission denied") => fail(2, &why),
                Verdict::Error(why) => fail(1, &why),
            }
        }
        Err(e) => fail(
            2,
            &format!(
                "cannot ask the control socket {}: {} (is securesock running with control-socket set?)",
                socket.display(),
                crate::reason::io_reason(&e)
            ),
        ),
    }
}

fn fail(code: u8, message: &str) -> u8 {
    let _ = writeln!(io::stderr(), "securesock: error: {message}");
    code
}

/// An answer: its lines, and how it ended.
#[derive(Debug)]
pub struct Answer {
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Error(String),
}

/// Sends one request line and reads the whole answer.
pub fn ask(socket: &Path, line: &str) -> io::Result<Answer> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    // A refusal may already be waiting, the server having closed: the write then fails, and the
    // refusal is still read below.
    let sent = stream.write_all(format!("{line}\n").as_bytes());
    let mut lines = Vec::new();
    for read in BufReader::new(&stream).lines() {
        match read {
            Ok(line) => lines.push(line),
            Err(e) if lines.is_empty() => return Err(sent.err().unwrap_or(e)),
            Err(_) => break,
        }
    }
    let verdict = match lines.pop() {
        Some(last) if last == "ok" => Verdict::Ok,
        Some(last) => match last.strip_prefix("error ") {
            Some(why) => Verdict::Error(why.to_string()),
            None => {
                lines.push(last);
                Verdict::Error("the answer ended without ok or error".into())
            }
        },
        None => {
            sent?;
            Verdict::Error("the control socket closed without an answer".into())
        }
    };
    Ok(Answer { lines, verdict })
}
