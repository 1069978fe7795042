//! The control socket's server side: any number of clients, none able to stall the control
//! loop that also runs conntrack GC, next-hop refresh, worker liveness and SIGTERM.
//!
//! # Rules
//! - Every client socket is non-blocking and driven by the control loop's `mio::Poll`; the
//!   loop never blocks on a client, reading or writing.
//! - One request per connection: one JSON line of at most [`MAX_REQUEST_BYTES`] that must be
//!   complete within [`REQUEST_TIMEOUT`] of the connect. A longer line is answered with an
//!   error at once (nothing more is read); a late one is disconnected with an error.
//! - An answer must be taken within [`WRITE_TIMEOUT`] of being ready, else the client is
//!   dropped. Answers waiting to be written take at most [`MAX_PENDING_BYTES`] together; one
//!   that would pass that is replaced by an error saying so.
//! - At most [`MAX_CLIENTS`] at once; one more is told the server is busy and closed.
//! - An answer that depends on the workers (a policy change in force on every worker) is
//!   held back without waiting: the loop checks it on every pass ([`Server::tick`]).
//! - Root only: the socket file is mode 0600, and the peer's uid (SO_PEERCRED) is checked
//!   when it connects.
//!
//! Requests themselves run on the control thread; what they may cost is bounded by the
//! bounds on their inputs (docs/security.md).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use serde::{Deserialize, Serialize};

use crate::api::{Request, Response};

/// Longest request line, in bytes, not counting its newline. (A 4 MiB policy text fits
/// once JSON-escaped unless it is mostly quotes, backslashes and newlines; the CLI refuses a
/// request over the bound before sending it.)
pub const MAX_REQUEST_BYTES: usize = 8 << 20;
/// Clients served at once.
pub const MAX_CLIENTS: usize = 32;
/// From connect to the end of the request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// From an answer being ready to its last byte being taken.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Answers waiting to be written, all clients together.
pub const MAX_PENDING_BYTES: usize = 256 << 20;
/// How long an answer may wait for every worker to run a change.
pub const APPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The listener's token; clients get the ones after it.
pub const LISTENER: Token = Token(0);

/// What the control socket has seen (shown in `fastpath status`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerStats {
    /// Clients connected right now.
    pub clients: u64,
    /// Requests answered (including error answers).
    pub answered: u64,
    /// Clients refused because [`MAX_CLIENTS`] were connected.
    pub refused_busy: u64,
    /// Clients refused because their uid is not 0.
    pub refused_not_root: u64,
    /// Requests longer than [`MAX_REQUEST_BYTES`].
    pub too_large: u64,
    /// Clients dropped for not finishing their request, or not taking their answer, in time.
    pub timed_out: u64,
    /// Answers replaced by an error because of [`MAX_PENDING_BYTES`].
    pub answers_too_large: u64,
}

/// What a request handler answers.
pub enum Reply {
    /// The answer, now.
    Now(Response),
    /// An answer that is right once every worker runs table generation `generation`:
    /// `make(true)` then, or `make(false)` after [`APPLY_TIMEOUT`].
    WhenApplied {
        generation: u64,
        make: Box<dyn FnOnce(bool) -> Response>,
    },
    /// The answer comes later, from [`Server::finish`] with this ticket (an endpoint change,
    /// which runs over several passes of the loop), or an error after [`DEFERRED_TIMEOUT`].
    Later { ticket: u64 },
}

/// How long an answer given to [`Server::finish`] may take.
pub const DEFERRED_TIMEOUT: Duration = Duration::from_secs(25);

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Now(r) => f.debug_tuple("Now").field(r).finish(),
            Reply::WhenApplied { generation, .. } => f
                .debug_struct("WhenApplied")
                .field("generation", generation)
                .finish_non_exhaustive(),
            Reply::Later { ticket } => f.debug_struct("Later").field("ticket", ticket).finish(),
        }
    }
}

enum State {
    Reading,
    Waiting {
        generation: u64,
        make: Box<dyn FnOnce(bool) -> Response>,
    },
    Deferred {
        ticket: u64,
    },
    Writing {
        out: Vec<u8>,
        written: usize,
    },
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    state: State,
    deadline: Instant,
}

/// The control socket server.
pub struct Server {
    listener: UnixListener,
    clients: hashbrown::HashMap<Token, Client>,
    next: usize,
    pending: usize,
    pub stats: ServerStats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("clients", &self.clients.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn line(r: &Response) -> Vec<u8> {
    let mut v = serde_json::to_vec(r).expect("responses serialize");
    v.push(b'\n');
    v
}

fn error(message: String) -> Response {
    Response::Error { message }
}

impl Server {
    /// Serve `listener` (already bound, mode 0600), registered with `registry`.
    pub fn new(std: std::os::unix::net::UnixListener, registry: &Registry) -> io::Result<Server> {
        std.set_nonblocking(true)?;
        let mut listener = UnixListener::from_std(std);
        registry.register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Server {
            listener,
            clients: hashbrown::HashMap::new(),
            next: 1,
            pending: 0,
            stats: ServerStats::default(),
        })
    }

    /// How long the loop may sleep in poll(2): at most `max`, less if a client's deadline
    /// comes sooner (a held-back answer is checked every 1 ms).
    pub fn timeout(&self, max: Duration) -> Duration {
        let now = Instant::now();
        self.clients
            .values()
            .map(|c| match c.state {
                State::Waiting { .. } => Duration::from_millis(1),
                _ => c.deadline.saturating_duration_since(now),
            })
            .fold(max, Duration::min)
    }

    /// Accept every waiting connection.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            let (mut stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and friends: leave the rest in the backlog for the next pass.
                Err(_) => return,
            };
            let refuse = match crate::xsk::sys::peer_uid(&stream) {
                Ok(0) if self.clients.len() < MAX_CLIENTS => None,
                Ok(0) => {
                    self.stats.refused_busy += 1;
                    Some(format!(
                        "busy: {MAX_CLIENTS} clients are connected; try again"
                    ))
                }
                Ok(uid) => {
                    self.stats.refused_not_root += 1;
                    Some(format!(
                        "uid {uid} may not use the control socket (root only)"
                    ))
                }
                Err(e) => Some(format!("SO_PEERCRED: {e}")),
            };
            if let Some(msg) = refuse {
                // Best effort, never blocking: the socket buffer takes a short line.
                let _ = stream.write(&line(&error(msg)));
                continue;
            }
            let token = Token(self.next);
            self.next += 1;
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.clients.insert(
                token,
                Client {
                    stream,
                    buf: Vec::new(),
                    state: State::Reading,
                    deadline: Instant::now() + REQUEST_TIMEOUT,
                },
            );
            self.stats.clients = self.clients.len() as u64;
        }
    }

    /// A client's socket is ready: read its request (and answer it with `handle`) or write
    /// its answer.
    pub fn ready(
        &mut self,
        token: Token,
        registry: &Registry,
        handle: &mut dyn FnMut(Request) -> Reply,
    ) {
        let Some(mut c) = self.clients.remove(&token) else {
            return;
        };
        let keep = match c.state {
            State::Reading => self.read(&mut c, handle),
            State::Waiting { .. } | State::Deferred { .. } => true,
            State::Writing { .. } => true,
        } && self.write(&mut c);
        if keep {
            self.clients.insert(token, c);
        } else {
            self.close(c, registry);
        }
        self.stats.clients = self.clients.len() as u64;
    }

    /// Deadlines and held-back answers; call on every pass of the loop. `applied(g)` says
    /// whether every worker runs generation `g`.
    pub fn tick(&mut self, registry: &Registry, applied: &mut dyn FnMut(u64) -> bool) {
        // Readiness is edge-triggered: connections left in the backlog by an accept error
        // (EMFILE, a full client table) would otherwise wait for the next connect.
        self.accept(registry);
        let now = Instant::now();
        let tokens: Vec<Token> = self.clients.keys().copied().collect();
        for t in tokens {
            let Some(mut c) = self.clients.remove(&t) else {
                continue;
            };
            let mut keep = true;
            match &c.state {
                State::Waiting { generation, .. } => {
                    let done = applied(*generation);
                    if done || now >= c.deadline {
                        let State::Waiting { make, .. } =
                            std::mem::replace(&mut c.state, State::Reading)
                        else {
                            unreachable!("matched above")
                        };
                        self.answer(&mut c, make(done));
                        keep = self.write(&mut c);
                    }
                }
                State::Deferred { ticket } if now >= c.deadline => {
                    let msg = format!(
                        "no answer within {} s (change {ticket} may still complete: check with the list request)",
                        DEFERRED_TIMEOUT.as_secs()
                    );
                    self.answer(&mut c, error(msg));
                    keep = self.write(&mut c);
                }
                State::Reading if now >= c.deadline => {
                    self.stats.timed_out += 1;
                    let _ = c.stream.write(&line(&error(format!(
                        "request not complete within {} s",
                        REQUEST_TIMEOUT.as_secs()
                    ))));
                    keep = false;
                }
                State::Writing { .. } if now >= c.deadline => {
                    self.stats.timed_out += 1;
                    keep = false;
                }
                _ => {}
            }
            if keep {
                self.clients.insert(t, c);
            } else {
                self.close(c, registry);
            }
        }
        self.stats.clients = self.clients.len() as u64;
    }

    /// Read what is there; on a complete line, run the request. False: drop the client.
    fn read(&mut self, c: &mut Client, handle: &mut dyn FnMut(Request) -> Reply) -> bool {
        let mut chunk = [0u8; 64 << 10];
        let mut eof = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let room = MAX_REQUEST_BYTES + 1 - c.buf.len().min(MAX_REQUEST_BYTES + 1);
                    let took = n.min(room);
                    c.buf.extend_from_slice(&chunk[..took]);
                    // Only the new bytes can hold the first newline.
                    if chunk[..took].contains(&b'\n') || c.buf.len() > MAX_REQUEST_BYTES {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        let end = match c.buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= MAX_REQUEST_BYTES => i,
            _ if c.buf.len() > MAX_REQUEST_BYTES => {
                self.stats.too_large += 1;
                let msg = format!(
                    "request longer than {MAX_REQUEST_BYTES} bytes: refused without reading the rest"
                );
                self.answer(c, error(msg));
                return true;
            }
            // A request may end with the connection instead of a newline.
            None if eof && !c.buf.is_empty() => c.buf.len(),
            None if eof => return false,
            None => return true,
            // Not reached: a newline past the bound means a buffer past it (arm 2).
            Some(i) => i,
        };
        let reply = match serde_json::from_slice::<Request>(&c.buf[..end]) {
            Ok(req) => handle(req),
            Err(e) => Reply::Now(error(format!("bad request: {e}"))),
        };
        c.buf = Vec::new();
        match reply {
            Reply::Now(r) => self.answer(c, r),
            Reply::WhenApplied { generation, make } => {
                c.state = State::Waiting { generation, make };
                c.deadline = Instant::now() + APPLY_TIMEOUT;
            }
            Reply::Later { ticket } => {
                c.state = State::Deferred { ticket };
                c.deadline = Instant::now() + DEFERRED_TIMEOUT;
            }
        }
        true
    }

    /// Answer the client waiting on `ticket` ([`Reply::Later`]); nothing if it has gone.
    pub fn finish(&mut self, ticket: u64, r: Response, registry: &Registry) {
        let Some(t) = self
            .clients
            .iter()
            .find(|(_, c)| matches!(c.state, State::Deferred { ticket: k } if k == ticket))
            .map(|(t, _)| *t)
        else {
            return;
        };
        let Some(mut c) = self.clients.remove(&t) else {
            return;
        };
        self.answer(&mut c, r);
        if self.write(&mut c) {
            self.clients.insert(t, c);
        } else {
            self.close(c, registry);
        }
        self.stats.clients = self.clients.len() as u64;
    }

    /// Queue `r` as the client's answer (or an error if the answers waiting are too many).
    fn answer(&mut self, c: &mut Client, r: Response) {
        let mut out = line(&r);
        if self.pending + out.len() > MAX_PENDING_BYTES {
            self.stats.answers_too_large += 1;
            out = line(&error(format!(
                "the answer is {} bytes and {} are already waiting for other clients; at most {MAX_PENDING_BYTES} may wait: try again",
                out.len(),
                self.pending
            )));
        }
        self.pending += out.len();
        self.stats.answered += 1;
        c.state = State::Writing { out, written: 0 };
        c.deadline = Instant::now() + WRITE_TIMEOUT;
    }

    /// Write what the socket takes. False when done (or failed): drop the client.
    fn write(&mut self, c: &mut Client) -> bool {
        let State::Writing { out, written } = &mut c.state else {
            return true;
        };
        while *written < out.len() {
            match c.stream.write(&out[*written..]) {
                Ok(0) => return false,
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        false
    }

    fn close(&mut self, mut c: Client, registry: &Registry) {
        if let State::Writing { out, .. } = &c.state {
            self.pending -= out.len();
        }
        let _ = registry.deregister(&mut c.stream);
    }
}
