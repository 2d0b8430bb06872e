//! A private PostgreSQL server started from the machine's PostgreSQL binaries.
//!
//! With no database URL configured, `tranche serve` keeps its data in `<data_dir>/pg` (created
//! with `initdb` on first start, reused afterwards) and runs `postgres` as a child process that
//! listens only on a Unix socket in `<data_dir>/run` (no TCP port, so nothing else on the machine
//! can reach it and two instances never collide). The test suite uses the same code for its
//! throwaway cluster, with durability switched off for speed.
//!
//! Lifecycle: the server runs in its own process group (a Ctrl-C in the terminal reaches Tranche
//! only, which finishes its work and then stops the server with a fast shutdown), and it is
//! started with a parent-death signal so that a crashed or killed Tranche never leaves an orphan
//! server behind. PostgreSQL refuses to run as root; when Tranche runs as root it runs the server
//! as the `postgres` user.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid, User, chown};
use sha2::{Digest, Sha256};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The port only names the socket file (`.s.PGSQL.5432`); the server opens no TCP port.
const SOCKET_PORT: u16 = 5432;
const SUPERUSER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run the embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Directory holding `pg/` (the cluster), `run/` (the socket) and `postgres.log`.
    pub root: PathBuf,
    /// Throwaway cluster for tests: `fsync`, synchronous commit and full-page writes off.
    pub throwaway: bool,
    /// Extra server settings (`name=value`, passed as `-c`), e.g. for profiling.
    pub settings: Vec<String>,
}

impl EmbeddedOptions {
    /// A cluster that survives restarts (what `tranche serve` uses).
    pub fn durable(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            throwaway: false,
            settings: Vec::new(),
        }
    }

    /// A fast, non-crash-safe cluster for tests.
    pub fn throwaway(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            throwaway: true,
            settings: Vec::new(),
        }
    }
}

/// A running embedded server. Stop it with [`EmbeddedPostgres::stop`]; dropping it without
/// stopping still asks the server to shut down.
pub struct EmbeddedPostgres {
    /// The postmaster; taken by `stop`, so `Drop` only signals a server nobody stopped.
    child: Option<Child>,
    /// Directory of the Unix socket clients connect through.
    socket_dir: PathBuf,
    /// The cluster directory, for messages.
    data_dir: PathBuf,
}

/// The PostgreSQL binaries to use and the account to run them as.
struct Toolchain {
    bin_dir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` user when Tranche runs as root.
    run_as: Option<(Uid, Gid)>,
}

impl EmbeddedPostgres {
    /// Initialises the cluster if needed, starts the server and waits until it accepts
    /// connections. Blocking: call it during start-up, before serving.
    pub fn start(options: &EmbeddedOptions) -> anyhow::Result<Self> {
        let tools = Toolchain::find()?;
        let root = usable_root(&options.root, &tools)?;
        let data_dir = root.join("pg");
        let socket_dir = root.join("run");
        for dir in [&root, &data_dir, &socket_dir] {
            fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            tools.give(dir)?;
        }
        set_mode(&data_dir, 0o700)?;
        set_mode(&socket_dir, 0o700)?;

        if !data_dir.join("PG_VERSION").exists() {
            tools.initdb(&data_dir, options.throwaway)?;
        }

        let log_path = root.join("postgres.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("could not open {}", log_path.display()))?;
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);

        let mut cmd = tools.command("postgres");
        cmd.arg("-D")
            .arg(&data_dir)
            .arg("-k")
            .arg(&socket_dir)
            .arg("-p")
            .arg(SOCKET_PORT.to_string())
            .args(["-c", "listen_addresses="])
            .args(["-c", "unix_socket_permissions=0700"])
            .args(["-c", "max_connections=300"]);
        if options.throwaway {
            cmd.args(["-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        for setting in &options.settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Terminal signals go to Tranche, which stops the server after it has drained.
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe. It runs after the uid switch, which would otherwise clear
        // the parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", tools.bin("postgres").display()))?;
        let server = Self {
            child: Some(child),
            socket_dir,
            data_dir,
        }
        .wait_ready(&log_path, log_start)?;
        tracing::info!(
            data_dir = %server.data_dir.display(),
            socket_dir = %server.socket_dir.display(),
            "embedded PostgreSQL is ready"
        );
        Ok(server)
    }

    /// The postmaster's process id (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Connection options for database `database` on this server.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new()
            .socket(&self.socket_dir)
            .port(SOCKET_PORT)
            .username(SUPERUSER)
            .database(database)
    }

    /// Creates `database` unless it exists.
    pub async fn ensure_database(&self, database: &str) -> anyhow::Result<()> {
        let mut conn = PgConnection::connect_with(&self.connect_options("postgres"))
            .await
            .context("could not connect to the embedded PostgreSQL")?;
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
                .bind(database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            // The name is quoted as an identifier, so it cannot inject SQL.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "create database {}",
                quote_ident(database)
            )))
            .execute(&mut conn)
            .await?;
        }
        conn.close().await?;
        Ok(())
    }

    /// Asks the server for a fast shutdown (sessions are ended, the checkpoint is written) and
    /// waits for it to exit.
    pub async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGINT);
        let waited =
            tokio::task::spawn_blocking(move || wait_with_timeout(&mut child, STOP_TIMEOUT))
                .await
                .unwrap_or(false);
        if waited {
            tracing::info!("embedded PostgreSQL stopped");
        } else {
            tracing::warn!(
                pid,
                "embedded PostgreSQL did not stop in time; sent SIGQUIT"
            );
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGQUIT);
        }
    }

    fn wait_ready(mut self, log_path: &Path, log_start: u64) -> anyhow::Result<Self> {
        let child = self.child.as_mut().expect("started");
        let pid = child.id().to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the embedded PostgreSQL exited during start-up ({status}). Its log ({}):\n{}",
                    log_path.display(),
                    read_from(log_path, log_start)
                );
            }
            // Line 1 is the postmaster's pid, line 8 its status; the pid check ignores a stale
            // file left by a crashed run.
            if let Ok(contents) = fs::read_to_string(&pid_file) {
                let lines: Vec<&str> = contents.lines().collect();
                if lines.first().map(|l| l.trim()) == Some(pid.as_str())
                    && lines.get(7).map(|l| l.trim()) == Some("ready")
                {
                    return Ok(self);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the embedded PostgreSQL did not become ready within {READY_TIMEOUT:?}; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGINT);
        }
    }
}

impl Toolchain {
    fn find() -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().ok_or_else(|| {
            anyhow::anyhow!(
                "no database is configured and no PostgreSQL server binaries were found \
                 (looked for `initdb` and `postgres` on PATH and in /usr/lib/postgresql/*/bin).\n\
                 Either install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; \
                 Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@16`) \
                 so Tranche can start its own private server, or set DATABASE_URL to an \
                 existing database, e.g. DATABASE_URL=postgres://user:pass@localhost:5432/tranche"
            )
        })?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name(SUPERUSER)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "PostgreSQL refuses to run as root and there is no `{SUPERUSER}` user to run \
                     the embedded server as. Run Tranche as a normal user, create the user \
                     (`useradd --system {SUPERUSER}`), or set DATABASE_URL."
                )
            })?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        Ok(Self { bin_dir, run_as })
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin(name));
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        // Client variables from the caller's shell must not redirect the server or initdb.
        for var in ["PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Makes `path` owned by the account the server runs as (no-op when not root).
    fn give(&self, path: &Path) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.run_as {
            chown(path, Some(uid), Some(gid))
                .with_context(|| format!("could not hand {} to `{SUPERUSER}`", path.display()))?;
        }
        Ok(())
    }

    /// Whether the server's account can write into `dir` (every parent must be traversable).
    fn can_write(&self, dir: &Path) -> bool {
        match self.run_as {
            None => true,
            Some((uid, gid)) => Command::new("test")
                .arg("-w")
                .arg(dir)
                .uid(uid.as_raw())
                .gid(gid.as_raw())
                .status()
                .is_ok_and(|s| s.success()),
        }
    }

    fn initdb(&self, data_dir: &Path, throwaway: bool) -> anyhow::Result<()> {
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        if throwaway {
            cmd.arg("--no-sync");
        }
        let output = cmd
            .output()
            .with_context(|| format!("could not run {}", self.bin("initdb").display()))?;
        if !output.status.success() {
            bail!(
                "initdb failed for {}:\n{}{}",
                data_dir.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        tracing::info!(data_dir = %data_dir.display(), "initialised a new embedded PostgreSQL cluster");
        Ok(())
    }
}

/// The configured root, made absolute; as root, a directory under /var/lib/tranche instead when
/// the `postgres` account cannot reach the configured one (e.g. a checkout inside /root).
fn usable_root(root: &Path, tools: &Toolchain) -> anyhow::Result<PathBuf> {
    let root = std::path::absolute(root)
        .with_context(|| format!("invalid data directory {}", root.display()))?;
    fs::create_dir_all(&root).with_context(|| format!("could not create {}", root.display()))?;
    tools.give(&root)?;
    if tools.can_write(&root) {
        return Ok(root);
    }
    let digest = Sha256::digest(root.as_os_str().as_encoded_bytes());
    let fallback =
        Path::new("/var/lib/tranche").join(format!("embedded-{}", &hex::encode(digest)[..16]));
    tracing::warn!(
        configured = %root.display(),
        using = %fallback.display(),
        "the `postgres` account cannot reach the configured data directory (a parent directory is \
         private); keeping the embedded database elsewhere. Set TRANCHE_DATA_DIR to choose."
    );
    fs::create_dir_all(&fallback)
        .with_context(|| format!("could not create {}", fallback.display()))?;
    tools.give(&fallback)?;
    if !tools.can_write(&fallback) {
        bail!(
            "the `postgres` account cannot write to {} or {}; set TRANCHE_DATA_DIR to a directory it can reach",
            root.display(),
            fallback.display()
        );
    }
    Ok(fallback)
}

/// `initdb` and `postgres` from PATH, else from the newest /usr/lib/postgresql/<version>/bin.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_tools(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not set permissions on {}", path.display()))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What the log gained since `offset` (the last 4 KiB of it).
fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = offset.max(len.saturating_sub(4096));
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let _ = file.read_to_string(&mut text);
        }
    }
    text
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}
