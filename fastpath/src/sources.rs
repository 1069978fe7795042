//! Where intent comes from: sources turn what they watch into batches of intent on one
//! channel, which the control loop drains on every pass ([`crate::daemon`]): the config
//! file (re-read on SIGHUP), and with `source: kvstore` or `kubernetes` the cluster's
//! agent ([`crate::kvstore`], [`crate::k8s`]), which sends whole views of the cluster.
//! None can block the loop: the channel is bounded; the config source drops a reload that
//! finds it full and says so, the cluster agents send their newest view again.
//!
//! The control socket is not a source: its requests are answered by the loop itself
//! (`crate::daemon`'s `handle`), with the same `Datapath` calls.

use std::path::PathBuf;

use control::config::Config;
use crossbeam_channel::{Receiver, Sender};

/// Batches waiting for the loop.
pub const CHANNEL: usize = 64;

/// One change a source wants.
#[derive(Debug)]
pub enum Intent {
    /// The config file's services and policies, as of now (re-read on SIGHUP): they
    /// replace the config's previous ones, under what was applied at run time.
    ConfigServicesAndPolicies(Box<Config>),
    /// The rest of the cluster as the kvstore has it now (`source: kvstore`): it replaces
    /// the previous view whole.
    Cluster(Box<crate::kvstore::schema::View>),
}

/// Intents from one source, applied together.
#[derive(Debug)]
pub struct Batch {
    /// Who sent it (for the log): `config file /etc/fastpath/node.yaml`.
    pub source: String,
    pub intents: Vec<Intent>,
}

/// Run the future `f` makes on a thread of its own named `name`, with a single-threaded
/// tokio runtime (the etcd and Kubernetes clients'): only such threads run async code, and
/// the control loop never waits on them.
pub fn spawn_async<F, Fut>(name: &str, f: F) -> std::io::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let name = name.to_string();
    let who = name.clone();
    std::thread::Builder::new().name(name).spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f()),
            Err(e) => eprintln!("fastpath: {who}: no async runtime: {e}"),
        }
    })?;
    Ok(())
}

/// The channel the loop drains.
pub fn channel() -> (Sender<Batch>, Receiver<Batch>) {
    crossbeam_channel::bounded(CHANNEL)
}

/// The config-file source: on every SIGHUP, read `path` (bounded like any config: 16 MiB,
/// YAML budgets), parse it and send it. A file that cannot be read or parsed is reported in
/// the log and sends nothing, so what is in force stays. Runs on its own thread, which only
/// ever blocks itself.
pub fn config_file(path: PathBuf, tx: Sender<Batch>) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("fp-src-config".into())
        .spawn(move || {
            for _ in signals.forever() {
                let source = format!("config file {}", path.display());
                match Config::load(&path) {
                    Ok(cfg) => {
                        let b = Batch {
                            source: source.clone(),
                            intents: vec![Intent::ConfigServicesAndPolicies(Box::new(cfg))],
                        };
                        if tx.try_send(b).is_err() {
                            eprintln!(
                                "fastpath: {source}: {CHANNEL} changes are waiting; this reload is dropped (send SIGHUP again)"
                            );
                        }
                    }
                    Err(e) => eprintln!(
                        "fastpath: SIGHUP: {source} not reloaded, the old one stays in force: {e}"
                    ),
                }
            }
        })?;
    Ok(())
}
