//! How a container's image maps to local programs, and what one start of a container runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// How an image runs here: the program its entrypoint names and the programs its commands may
/// name, mapped to local files.
#[derive(Debug, Clone, Default)]
pub struct ImageRule {
    /// Matches an image whose repository (without tag or digest) is this, or ends with
    /// `/<this>`: `funcscale-worker` matches `ghcr.io/funcscale/funcscale-worker:0.1.0`.
    pub repository: String,
    /// The image's ENTRYPOINT (used when a container has no `command`).
    pub entrypoint: Vec<String>,
    /// The image's CMD (used when a container has neither `command` nor `args`).
    pub cmd: Vec<String>,
    /// A program named by its file name (`funcscale-worker`, `celery`) → the local file.
    pub programs: BTreeMap<String, PathBuf>,
    /// Directories put first on `PATH` (the image's PATH).
    pub path: Vec<PathBuf>,
    /// The image's ENV.
    pub env: BTreeMap<String, String>,
    /// The image's WORKDIR (when the container's `workingDir` does not exist here).
    pub workdir: Option<PathBuf>,
}

impl ImageRule {
    pub fn new(repository: &str) -> Self {
        Self {
            repository: repository.to_string(),
            ..Default::default()
        }
    }

    pub(super) fn matches(&self, image: &str) -> bool {
        let repo = image.split('@').next().unwrap_or(image);
        // a tag is a ':' after the last '/' (a ':' before it is a registry port)
        let repo = match (repo.rfind(':'), repo.rfind('/')) {
            (Some(c), Some(s)) if c > s => &repo[..c],
            (Some(c), None) => &repo[..c],
            _ => repo,
        };
        repo == self.repository || repo.ends_with(&format!("/{}", self.repository))
    }

    /// The program for `name`: a mapped program, else found on the image's PATH, else as is.
    pub(super) fn program(&self, name: &str) -> PathBuf {
        let base = Path::new(name)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(name);
        if let Some(p) = self.programs.get(base) {
            return p.clone();
        }
        if !name.contains('/') {
            for d in &self.path {
                let p = d.join(name);
                if p.is_file() {
                    return p;
                }
            }
        }
        PathBuf::from(name)
    }
}

/// A container ready to start: program, arguments, environment, working directory.
#[derive(Debug, Clone)]
pub(super) struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub rule: ImageRule,
    /// What to bind-mount, in order: local directory, mount path, read-only.
    pub mounts: Vec<(PathBuf, String, bool)>,
}

/// Bind-mounts `$1` triples (source, target, ro|rw) in the new mount namespace, then execs the
/// rest. Every source is opened first (a mount may hide where a later source lives, e.g. an
/// emptyDir at /tmp over a work directory under /tmp) and mounted from its descriptor
/// (`--no-canonicalize`: mount(8) would otherwise resolve `/proc/self/fd/N` back to a path,
/// which the earlier mount hides); a missing mount point is created (on the host's file
/// system when it is not under a volume).
const MOUNT_SCRIPT: &str = r#"n=$1; shift
i=0
while [ "$i" -lt "$n" ]; do
  eval "exec $((i + 3))<\"\$1\"" || { echo "kubelet: cannot open volume $1" >&2; exit 127; }
  eval "t_$i=\$2; m_$i=\$3"
  shift 3; i=$((i + 1))
done
i=0
while [ "$i" -lt "$n" ]; do
  eval "t=\$t_$i; m=\$m_$i"
  mkdir -p "$t" 2>/dev/null
  mount --no-canonicalize --bind "/proc/self/fd/$((i + 3))" "$t" || { echo "kubelet: cannot mount a volume at $t" >&2; exit 127; }
  [ "$m" = ro ] && mount -o remount,bind,ro "$t"
  eval "exec $((i + 3))<&-"
  i=$((i + 1))
done
exec "$@""#;

impl Launch {
    /// Program and arguments, wrapped in `unshare -m` with the bind mounts when there are any.
    pub(super) fn argv(&self) -> (PathBuf, Vec<String>) {
        if self.mounts.is_empty() {
            return (self.program.clone(), self.args.clone());
        }
        // in order: the volumes (parents first), then the image paths they cover
        let mounts = &self.mounts;
        let mut a: Vec<String> = ["-m", "--propagation", "private", "--", "/bin/bash", "-c"]
            .into_iter()
            .map(String::from)
            .collect();
        a.push(MOUNT_SCRIPT.into());
        a.push("kubelet-mount".into());
        a.push(mounts.len().to_string());
        for (src, dst, ro) in mounts {
            a.push(src.display().to_string());
            a.push(dst.clone());
            a.push(if *ro { "ro" } else { "rw" }.into());
        }
        a.push(self.program.display().to_string());
        a.extend(self.args.iter().cloned());
        (PathBuf::from("unshare"), a)
    }

    /// A command run "inside" the container (exec probes and hooks).
    pub fn exec(&self, argv: &[String]) -> Option<Command> {
        let (first, rest) = argv.split_first()?;
        let inner = Launch {
            program: self.rule.program(first),
            args: rest.to_vec(),
            ..self.clone()
        };
        let (program, args) = inner.argv();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        Some(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_match_by_repository() {
        let r = ImageRule::new("funcscale-worker");
        assert!(r.matches("ghcr.io/funcscale/funcscale-worker:0.1.0"));
        assert!(r.matches("funcscale-worker"));
        assert!(r.matches("localhost:5000/funcscale-worker@sha256:abc"));
        assert!(!r.matches("ghcr.io/funcscale/funcscale-worker-debug:0.1.0"));
        assert!(!r.matches("registry.example.com/shop/app:1.4.2"));
    }
}
