//! HAProxy's Runtime API: one exchange per connection, over TCP, a local unix socket,
//! or through SSH to the load balancer's unix socket (with `socat` on that host).
//!
//! Answers are parsed strictly: a change succeeds only on HAProxy's empty answer;
//! anything else ("No such server.", a usage message) is an error carrying HAProxy's
//! own words.

use super::{AdminState, Counters, LbError, LoadBalancer, ServerStatus};
use futures_util::future::BoxFuture;
use openssh::{Session, Stdio};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::OnceCell;
use vesemir_core::config::SshConfig;
use vesemir_core::config::is_haproxy_name;
use vesemir_core::template::shell_quote;

/// Largest answer read from HAProxy (a `show stat` of a big backend fits easily).
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// srv_admin_state flags (HAProxy's SRV_ADMF_*): maintenance forced, inherited, from
/// configuration, resolution, hostname; drain forced or inherited.
const ADMF_MAINT: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
const ADMF_DRAIN: u32 = 0x08 | 0x10;

/// Where the Runtime API is reached.
#[derive(Debug, Clone)]
pub enum Transport {
    Tcp(String),
    Unix(PathBuf),
    /// The socket path on the load balancer host, reached over the cluster's SSH.
    Ssh {
        remote: Arc<SshRemote>,
        socket: String,
    },
}

/// A load balancer host reached over SSH, connected on first use: a deployment whose
/// executor never talks to it (Ansible's module connects on its own) opens nothing.
#[derive(Debug)]
pub struct SshRemote {
    ssh: SshConfig,
    host: String,
    control_dir: PathBuf,
    session: OnceCell<Session>,
}

impl SshRemote {
    pub fn new(ssh: SshConfig, host: String, control_dir: PathBuf) -> Self {
        Self { ssh, host, control_dir, session: OnceCell::new() }
    }

    async fn session(&self) -> std::io::Result<&Session> {
        self.session
            .get_or_try_init(|| crate::ssh::connect(&self.ssh, &self.host, &self.control_dir))
            .await
            .map_err(std::io::Error::other)
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeClient {
    transport: Transport,
    timeout: Duration,
}

impl RuntimeClient {
    pub fn new(transport: Transport, timeout: Duration) -> Self {
        Self { transport, timeout }
    }

    /// Sends one command and returns HAProxy's whole answer.
    pub async fn command(&self, command: &str) -> Result<String, LbError> {
        let line = format!("{command}\n");
        let exchange = async {
            match &self.transport {
                Transport::Tcp(address) => {
                    let mut stream = tokio::net::TcpStream::connect(address).await?;
                    exchange(&mut stream, &line).await
                }
                Transport::Unix(path) => {
                    let mut stream = tokio::net::UnixStream::connect(path).await?;
                    exchange(&mut stream, &line).await
                }
                Transport::Ssh { remote, socket } => over_ssh(remote.session().await?, socket, &line).await,
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(LbError::Unreachable(e.to_string())),
            Err(_) => Err(LbError::Unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }

    /// A change command: HAProxy answers nothing when it worked.
    pub async fn change(&self, command: &str) -> Result<(), LbError> {
        let answer = self.command(command).await?;
        let answer = answer.trim();
        if answer.is_empty() {
            Ok(())
        } else {
            Err(LbError::Refused { command: command.to_owned(), answer: answer.to_owned() })
        }
    }

    pub async fn set_state(&self, backend: &str, server: &str, state: AdminState) -> Result<(), LbError> {
        self.change(&format!("set server {backend}/{server} state {}", state.as_str())).await
    }

    pub async fn set_weight_percent(&self, backend: &str, server: &str, percent: u8) -> Result<(), LbError> {
        self.change(&format!("set weight {backend}/{server} {percent}%")).await
    }

    /// The server's admin state, weights, status and current sessions, in one
    /// exchange: HAProxy runs `;`-separated commands in turn and ends each answer
    /// with an empty line.
    pub async fn server(&self, backend: &str, server: &str) -> Result<ServerStatus, LbError> {
        let command = format!("show servers state {backend}; show stat {backend} 4 -1");
        let answer = self.command(&command).await?;
        let refused = |answer: String| LbError::Refused { command: command.clone(), answer };
        let (state, stat) = answer.split_once("\n\n").ok_or_else(|| refused(answer.trim().to_owned()))?;
        let (admin, weight, initial_weight) = parse_servers_state(state, server).map_err(refused)?;
        let (status, sessions) = parse_stat(stat, server).map_err(refused)?;
        Ok(ServerStatus { admin, status, sessions, weight, initial_weight })
    }

    /// The backend's row of `show stat` (type 2: the backend itself), as counters.
    pub async fn backend_errors(&self, backend: &str) -> Result<Counters, LbError> {
        let command = format!("show stat {backend} 2 -1");
        let answer = self.command(&command).await?;
        parse_backend_errors(&answer).map_err(|answer| LbError::Refused { command, answer })
    }
}

/// One HAProxy instance, through its Runtime API.
#[derive(Debug)]
pub struct Haproxy {
    name: String,
    client: RuntimeClient,
}

impl Haproxy {
    pub fn new(name: &str, client: RuntimeClient) -> Self {
        Self { name: name.to_owned(), client }
    }
}

/// Names go into a one-line text protocol: anything but a plain name is refused
/// before it is sent.
fn check_names(backend: &str, server: &str) -> Result<(), LbError> {
    for name in [backend, server] {
        if !is_haproxy_name(name) {
            return Err(LbError::NotApplied(format!("{name:?} is not a valid HAProxy name")));
        }
    }
    Ok(())
}

impl LoadBalancer for Haproxy {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_state<'a>(
        &'a self,
        backend: &'a str,
        server: &'a str,
        state: AdminState,
    ) -> BoxFuture<'a, Result<(), LbError>> {
        Box::pin(async move {
            check_names(backend, server)?;
            self.client.set_state(backend, server, state).await
        })
    }

    fn set_weight<'a>(&'a self, backend: &'a str, server: &'a str, percent: u8) -> BoxFuture<'a, Result<(), LbError>> {
        Box::pin(async move {
            check_names(backend, server)?;
            self.client.set_weight_percent(backend, server, percent).await
        })
    }

    fn server<'a>(&'a self, backend: &'a str, server: &'a str) -> BoxFuture<'a, Result<ServerStatus, LbError>> {
        Box::pin(async move {
            check_names(backend, server)?;
            self.client.server(backend, server).await
        })
    }

    fn backend_errors<'a>(&'a self, backend: &'a str) -> BoxFuture<'a, Result<Counters, LbError>> {
        Box::pin(async move {
            check_names(backend, "BACKEND")?;
            self.client.backend_errors(backend).await
        })
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

async fn over_ssh(session: &Session, socket: &str, line: &str) -> std::io::Result<String> {
    let ssh = |e: openssh::Error| std::io::Error::other(e.to_string());
    let command = format!("socat - UNIX-CONNECT:{}", shell_quote(socket));
    let mut child = session
        .raw_command(&command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(ssh)?;
    if let Some(mut stdin) = child.stdin().take() {
        stdin.write_all(line.as_bytes()).await?;
        stdin.shutdown().await?;
    }
    let output = child.wait_with_output().await.map_err(ssh)?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "socat on the load balancer failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Finds `server` in a `show servers state` answer: (admin state, weight, initial weight).
pub fn parse_servers_state(answer: &str, server: &str) -> Result<(AdminState, u32, u32), String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    if lines.next().map(str::trim) != Some("1") {
        return Err(answer.trim().to_owned());
    }
    let header: Vec<&str> = match lines.next() {
        Some(h) if h.starts_with("# ") => h[2..].split_whitespace().collect(),
        _ => return Err(answer.trim().to_owned()),
    };
    let column = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("no {name} column"));
    let (name_at, admin_at, uweight_at, iweight_at) =
        (column("srv_name")?, column("srv_admin_state")?, column("srv_uweight")?, column("srv_iweight")?);
    for row in lines {
        let fields: Vec<&str> = row.split_whitespace().collect();
        if fields.get(name_at) != Some(&server) {
            continue;
        }
        let number = |at: usize| -> Result<u32, String> {
            fields.get(at).and_then(|f| f.parse().ok()).ok_or_else(|| format!("unreadable row: {row}"))
        };
        let flags = number(admin_at)?;
        let admin = if flags & ADMF_MAINT != 0 {
            AdminState::Maint
        } else if flags & ADMF_DRAIN != 0 {
            AdminState::Drain
        } else {
            AdminState::Ready
        };
        return Ok((admin, number(uweight_at)?, number(iweight_at)?));
    }
    Err("No such server.".to_owned())
}

/// The `BACKEND` row of a `show stat` CSV answer, as error counters. An empty field
/// (a counter this proxy mode does not keep) counts as 0.
pub fn parse_backend_errors(answer: &str) -> Result<Counters, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) if h.starts_with("# ") => h[2..].split(',').collect(),
        _ => return Err(answer.trim().to_owned()),
    };
    let column = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("no {name} column"));
    let name_at = column("svname")?;
    let row = lines
        .map(|row| row.split(',').collect::<Vec<&str>>())
        .find(|fields| fields.get(name_at) == Some(&"BACKEND"))
        .ok_or_else(|| "No BACKEND row.".to_owned())?;
    let count = |name: &str| -> Result<u64, String> {
        let field = row.get(column(name)?).copied().unwrap_or_default();
        if field.is_empty() { Ok(0) } else { field.parse().map_err(|_| format!("unreadable {name}: {field:?}")) }
    };
    Ok(Counters {
        connection_errors: count("econ")?,
        response_errors: count("eresp")?,
        retries: count("wretr")?,
        redispatches: count("wredis")?,
        http_5xx: count("hrsp_5xx")?,
        client_aborts: count("cli_abrt")?,
        server_aborts: count("srv_abrt")?,
        reset: false,
    })
}

/// Finds `server` in a `show stat` CSV answer: (status, current sessions).
pub fn parse_stat(answer: &str, server: &str) -> Result<(String, u64), String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) if h.starts_with("# ") => h[2..].split(',').collect(),
        _ => return Err(answer.trim().to_owned()),
    };
    let column = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("no {name} column"));
    let (name_at, status_at, scur_at) = (column("svname")?, column("status")?, column("scur")?);
    for row in lines {
        let fields: Vec<&str> = row.split(',').collect();
        if fields.get(name_at) != Some(&server) {
            continue;
        }
        let status = fields.get(status_at).copied().unwrap_or_default().to_owned();
        let sessions =
            fields.get(scur_at).and_then(|f| f.parse().ok()).ok_or_else(|| format!("unreadable row: {row}"))?;
        return Ok((status, sessions));
    }
    Err("No such server.".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Answers recorded from HAProxy 2.6.
    const SERVERS_STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 app 1 vm-01 127.0.0.1 0 8 10 100 2 8 2 0 6 0 0 0 - 18081 - 0 0 - - 0\n3 app 2 vm-02 127.0.0.1 2 1 1 1 3 8 2 0 6 0 0 0 - 18082 - 0 0 - - 0\n\n";
    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\napp,vm-01,0,0,3,0,,0,0,0,,0,,0,0,0,0,DRAIN,100\napp,vm-02,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP,1\n\n";

    #[test]
    fn servers_state_gives_admin_state_and_weights() {
        assert_eq!(parse_servers_state(SERVERS_STATE, "vm-01"), Ok((AdminState::Drain, 10, 100)));
        assert_eq!(parse_servers_state(SERVERS_STATE, "vm-02"), Ok((AdminState::Maint, 1, 1)));
    }

    #[test]
    fn stat_gives_status_and_sessions() {
        assert_eq!(parse_stat(STAT, "vm-01"), Ok(("DRAIN".to_owned(), 3)));
        assert_eq!(parse_stat(STAT, "vm-02"), Ok(("UP".to_owned(), 0)));
    }

    #[test]
    fn haproxy_refusals_are_errors_in_its_own_words() {
        assert_eq!(parse_servers_state("Can't find backend.\n\n", "vm-01"), Err("Can't find backend.".to_owned()));
        assert_eq!(parse_stat("No such proxy.\n\n", "vm-01"), Err("No such proxy.".to_owned()));
        assert_eq!(parse_stat(STAT, "vm-09"), Err("No such server.".to_owned()));
    }

    #[test]
    fn the_backend_row_gives_the_error_counters() {
        let stat = "# pxname,svname,econ,eresp,wretr,wredis,hrsp_5xx,cli_abrt,srv_abrt,status\n\
                    app,BACKEND,1,2,3,,5,6,7,UP\n\n";
        let counters = parse_backend_errors(stat).unwrap();
        assert_eq!(counters.total(), 24, "an empty field counts 0: {counters:?}");
        assert_eq!((counters.connection_errors, counters.redispatches, counters.server_aborts), (1, 0, 7));
        assert_eq!(parse_backend_errors("No such proxy.\n"), Err("No such proxy.".to_owned()));
    }
}
