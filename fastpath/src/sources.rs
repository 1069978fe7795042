//! Where intent comes from: sources turn what they watch into batches of intent on one
//! channel, which the control loop drains on every pass ([`crate::daemon`]). The config
//! file is the source today (re-read on SIGHUP); a CNI plugin, etcd and Kubernetes are the
//! next ones — each a producer on the same channel, none able to block the loop (the
//! channel is bounded; a source that finds it full drops its batch and says so, and sends
//! the next).
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
