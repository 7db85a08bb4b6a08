//! Running the `nft` binary (full replaces, structural diffs, `nft -c`, listings).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::TABLE;

/// Why running nft failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft failed ({status}): {stderr}{}", line.as_ref().map(|(n, l)| format!(" [script line {n}: {l}]")).unwrap_or_default())]
    Failed {
        /// Exit status as text (`exit status: 1`).
        status: String,
        /// nft's standard error, trimmed.
        stderr: String,
        /// The first script line nft complained about (1-based) and its text.
        line: Option<(usize, String)>,
    },
}

/// Runs the nft binary, optionally inside a named network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    binary: PathBuf,
    netns: Option<String>,
}

impl Default for Nft {
    fn default() -> Self {
        Nft::new()
    }
}

/// Finds the first `/dev/stdin:LINE:` (or `-:LINE:`) in nft's error output.
pub(super) fn failing_line(stderr: &str, script: &str) -> Option<(usize, String)> {
    for l in stderr.lines() {
        let rest = l
            .strip_prefix("/dev/stdin:")
            .or_else(|| l.strip_prefix("-:"))
            .or_else(|| l.strip_prefix("stdin:"));
        if let Some(rest) = rest {
            let num: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(n) = num.parse::<usize>()
                && n >= 1
            {
                let text = script.lines().nth(n - 1).unwrap_or("").trim().to_string();
                return Some((n, text));
            }
        }
    }
    None
}

impl Nft {
    /// `nft` from `PATH`, in the caller's namespace.
    pub fn new() -> Nft {
        Nft {
            binary: PathBuf::from("nft"),
            netns: None,
        }
    }

    /// A given nft binary.
    pub fn with_binary(path: impl Into<PathBuf>) -> Nft {
        Nft {
            binary: path.into(),
            netns: None,
        }
    }

    /// The same binary run as `ip netns exec NAME nft ...` (NAME under /run/netns).
    pub fn in_netns(mut self, name: impl Into<String>) -> Nft {
        self.netns = Some(name.into());
        self
    }

    fn command(&self) -> tokio::process::Command {
        match &self.netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => tokio::process::Command::new(&self.binary),
        }
    }

    /// Runs nft with `args`, feeding `stdin` if given; returns its standard output.
    pub async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
        let program = self.binary.display().to_string();
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| NftError::Spawn {
            program: program.clone(),
            source,
        })?;
        if let Some(pid) = child.id() {
            crate::nfnl::remember_child(pid);
        }
        let writer = {
            let input = child.stdin.take();
            let data = stdin.unwrap_or("").as_bytes().to_vec();
            async move {
                if let Some(mut input) = input {
                    // A write error means nft exited early; its status says why.
                    let _ = input.write_all(&data).await;
                    let _ = input.shutdown().await;
                }
            }
        };
        let (_, output) = tokio::join!(writer, child.wait_with_output());
        let output = output.map_err(|source| NftError::Spawn { program, source })?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let line = stdin.and_then(|s| failing_line(&stderr, s));
        tracing::warn!(status = %output.status, %stderr, ?line, "nft failed");
        Err(NftError::Failed {
            status: output.status.to_string(),
            stderr,
            line,
        })
    }

    /// `nft -f -` with the script on stdin: one atomic transaction.
    pub async fn apply(&self, script: &str) -> Result<(), NftError> {
        tracing::debug!(bytes = script.len(), "applying nft script");
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// `nft -c -f -`: checks the script against the kernel without committing it.
    pub async fn check(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-c", "-f", "-"], Some(script)).await.map(|_| ())
    }

    /// Deletes kuryr's tables if present (agent cleanup); one transaction.
    pub async fn remove_all(&self) -> Result<(), NftError> {
        let mut s = String::new();
        for fam in ["bridge", "inet"] {
            let _ = writeln!(s, "add table {fam} {TABLE}");
            let _ = writeln!(s, "delete table {fam} {TABLE}");
        }
        let _ = writeln!(s, "add table bridge {}", super::DVR_TABLE);
        let _ = writeln!(s, "delete table bridge {}", super::DVR_TABLE);
        self.apply(&s).await
    }
}
