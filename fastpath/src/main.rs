//! The `fastpath` command: run a node, inspect it, build lab topologies.
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use control::config::{Config, DEMO_CLUSTER, XdpMode};
use fastpath::{api, daemon, views};

#[derive(Parser, Debug)]
#[command(
    name = "fastpath",
    version,
    about = "Cilium's pod datapath in userspace on AF_XDP"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `println!` that hands a failed write back as an error instead of panicking: a reader that
/// closed the pipe early (`fastpath bpf ct list | head`) ends the command quietly
/// ([`main`] treats a broken pipe as success), never with a panic.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

/// `print!` the same way (see [`outln`]).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($t)*)?
    }};
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
struct Target {
    /// Node whose control socket to use (/run/fastpath/<node>.sock).
    #[arg(long)]
    node: Option<String>,
    /// Control socket path (overrides --node).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve a node: attach XDP, start pinned workers, serve the control socket.
    Run {
        /// Node config (YAML); the embedded demo config when absent.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Rx queues to serve, one pinned worker each (overrides datapath.queues).
        #[arg(long)]
        queues: Option<u32>,
        /// Cores for the workers, e.g. 0,1 (overrides datapath.cores).
        #[arg(long, value_delimiter = ',')]
        cores: Option<Vec<usize>>,
        /// XDP attach mode (overrides datapath.xdp_mode).
        #[arg(long, value_enum)]
        xdp_mode: Option<ModeArg>,
        /// What handles every device's frames: `xdp` (steering into the AF_XDP workers),
        /// `tc` (the in-kernel tc datapath over the same maps) or `auto` (XDP, tc where XDP
        /// cannot be attached). Overrides datapath.attach and datapath.attach_devices.
        #[arg(long, value_enum)]
        datapath: Option<DatapathArg>,
        /// Skip the pipeline and forward port i to port i^1 (the bare AF_XDP ceiling for bench).
        #[arg(long)]
        bare: bool,
        /// Control socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Where services and policies applied at run time are kept, so that a restart or
        /// crash restores them before traffic is served (runtime.json, mode 0600). Remove
        /// the file to start from the config alone.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/fastpath/<node>")]
        state_dir: PathBuf,
        /// Where conntrack and the session-affinity map live (files mapped into memory; the
        /// directory must be on tmpfs, e.g. /run or /dev/shm): a restart or crash finds every
        /// connection there. Survives the process, not a reboot; remove the directory to start
        /// with empty tables.
        #[arg(long, value_name = "DIR", default_value = "/run/fastpath/<node>")]
        run_dir: PathBuf,
    },
    /// Per-queue counters, XDP modes, cores and drop reasons of a running node.
    Status(Target),
    /// Cilium-style map dumps.
    Bpf {
        #[command(subcommand)]
        what: BpfCmd,
    },
    /// Add, replace or delete services on a running node (the control socket's
    /// ServiceApply / ServiceDelete).
    Service {
        #[command(subcommand)]
        what: ServiceCmd,
    },
    /// Add, replace, delete or list network policies on a running node
    /// (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy YAML).
    Policy {
        #[command(subcommand)]
        what: PolicyCmd,
    },
    /// Add, delete or list the pods a running node serves (what a CNI plugin calls: the
    /// control socket's endpoint_add / endpoint_delete / endpoints requests).
    Endpoint {
        #[command(subcommand)]
        what: EndpointCmd,
    },
    /// The security identities the node knows, with their labels, as `cilium-dbg identity
    /// list|get` prints them: the reserved ones, every pod's (this node's and the other
    /// nodes', from the config or the kvstore), and the CIDR identities the policies in
    /// force made.
    Identity {
        #[command(subcommand)]
        what: IdentityCmd,
    },
    /// Move a device between the datapaths at run time (docs/tc.md): `xdp` steers its
    /// frames to the AF_XDP workers, `tc` hands them to the in-kernel tc datapath; both use
    /// the same conntrack, policy and service maps, so established connections carry on.
    Datapath {
        #[command(subcommand)]
        what: DatapathCmd,
    },
    /// Print or check configs.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Build or remove the namespaces and veths a config describes (demo, tests, bench).
    Lab {
        #[command(subcommand)]
        what: LabCmd,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Native,
    Generic,
    Auto,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DatapathArg {
    Xdp,
    Tc,
    Auto,
}

impl From<DatapathArg> for control::config::DatapathChoice {
    fn from(d: DatapathArg) -> Self {
        match d {
            DatapathArg::Xdp => control::config::DatapathChoice::Xdp,
            DatapathArg::Tc => control::config::DatapathChoice::Tc,
            DatapathArg::Auto => control::config::DatapathChoice::Auto,
        }
    }
}

#[derive(Subcommand, Debug)]
enum BpfCmd {
    /// `cilium_lxc`, as `cilium-dbg bpf endpoint list` prints it.
    Endpoint {
        #[command(subcommand)]
        what: ListCmd,
    },
    /// `cilium_ipcache_v2`, as `cilium-dbg bpf ipcache list` prints it.
    Ipcache {
        #[command(subcommand)]
        what: ListCmd,
    },
    /// Pod CIDRs and their tunnel endpoints (derived from the ipcache), as the
    /// `cilium_tunnel_map` of Cilium ≤1.17 showed them.
    Tunnel {
        #[command(subcommand)]
        what: ListCmd,
    },
    /// The load-balancing maps, as `cilium-dbg bpf lb list` prints them.
    Lb {
        #[command(subcommand)]
        what: LbCmd,
    },
    /// Connection tracking, as `cilium-dbg bpf ct list global` prints it.
    Ct {
        #[command(subcommand)]
        what: CtCmd,
    },
    /// An endpoint's `cilium_policy_v3_<id>`, as `cilium-dbg bpf policy get` prints it.
    Policy {
        #[command(subcommand)]
        what: BpfPolicyCmd,
    },
}

#[derive(Subcommand, Debug)]
enum IdentityCmd {
    /// Every identity, by number.
    List(Target),
    /// One identity.
    Get {
        /// The numeric identity.
        id: u32,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum BpfPolicyCmd {
    Get {
        /// Endpoint ID (see `fastpath bpf endpoint list`).
        #[arg(required_unless_present = "all")]
        endpoint: Option<u16>,
        /// Every local endpoint.
        #[arg(long)]
        all: bool,
        /// Numeric identities instead of labels.
        #[arg(short = 'n', long)]
        numeric: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Add or replace the policies of a YAML file (`---`-separated objects or a List).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a policy: `Kind/namespace/name` or `namespace/name`.
    Delete {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// The policies in force and the local endpoints each selects.
    List(Target),
}

#[derive(Subcommand, Debug)]
enum LbCmd {
    List {
        #[command(flatten)]
        target: Target,
        /// Raw `cilium_lb4_services_v2` values (backend ID, count[qcount], revnat, flags).
        #[arg(long, group = "view")]
        frontends: bool,
        /// `cilium_lb4_backends_v3`.
        #[arg(long, group = "view")]
        backends: bool,
        /// `cilium_lb4_reverse_nat`.
        #[arg(long, group = "view")]
        revnat: bool,
        /// `cilium_lb4_maglev`: slots per backend and a digest of each table.
        #[arg(long, group = "view")]
        maglev: bool,
    },
}

#[derive(Subcommand, Debug)]
enum CtCmd {
    List {
        /// Only `global` exists (Cilium's per-endpoint CT maps are not used).
        #[arg(value_parser = ["global"])]
        scope: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Add or replace the services of a YAML file (one service or a list).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a service.
    Delete {
        /// `namespace/name` (or `name` for the default namespace).
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum DatapathCmd {
    /// Attach `device` (a pod's lxc device or the node NIC, as `fastpath status` lists
    /// them) to `datapath` (`auto` means xdp). The new attachment goes in before the old one
    /// goes. Not kept across a restart: the config (`datapath.attach`,
    /// `datapath.attach_devices`) decides at start.
    Set {
        device: String,
        #[arg(value_enum)]
        datapath: DatapathArg,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum EndpointCmd {
    /// Serve a pod from now on: its lxc device gets XDP and an AF_XDP socket on every rx
    /// queue, it gets an endpoint ID and a security identity, and `cilium_lxc`, the ipcache
    /// and the policy maps take it in one table switch. Returns once every worker serves it.
    /// Kept in the state dir: a restart serves it again.
    Add {
        /// Pod name (a Kubernetes object name).
        #[arg(long, required_unless_present = "file")]
        name: Option<String>,
        /// Kubernetes namespace.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The pod's IPv4 address.
        #[arg(long, required_unless_present = "file")]
        ip: Option<std::net::Ipv4Addr>,
        /// The pod's IPv6 address (dual stack), inside the node's `pod_cidr_v6`: written to
        /// `cilium_lxc` and the ipcache beside the IPv4 one (IPv6 frames are not forwarded
        /// yet; docs/endpoints.md).
        #[arg(long)]
        ipv6: Option<std::net::Ipv6Addr>,
        /// MAC of the pod's eth0.
        #[arg(long, required_unless_present = "file")]
        mac: Option<control::maps::MacAddr>,
        /// Host-side veth of the pod, in the node's network namespace.
        #[arg(long, required_unless_present = "file")]
        lxc: Option<String>,
        /// Endpoint ID (1-4095); the lowest free one when absent.
        #[arg(long)]
        id: Option<u16>,
        /// A pod label, `key=value` (repeat for more): selectors match them.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// The pod as YAML or JSON, with the fields of a `pods:` entry of the node config
        /// (instead of the flags above).
        #[arg(short = 'f', long = "file", conflicts_with_all = ["name", "ip", "ipv6", "mac", "lxc"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Stop serving a pod added at run time: XDP detached, sockets closed, its map entries,
    /// policy maps and conntrack entries gone.
    Delete {
        /// `namespace/name` (or `name` in namespace `default`).
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Every endpoint the node serves, from the config and added at run time.
    List(Target),
}

#[derive(Subcommand, Debug)]
enum ListCmd {
    List(Target),
}

#[derive(Subcommand, Debug)]
enum ConfigCmd {
    /// Print the embedded default config (node `demo`), or another node of the demo cluster.
    Default {
        /// demo | demo2 | demo-kernel
        #[arg(long, default_value = "demo")]
        node: String,
    },
    /// Parse and validate a config without touching anything.
    Check { file: PathBuf },
}

#[derive(Subcommand, Debug)]
enum LabCmd {
    /// Create the node and pod namespaces with their veths.
    Up {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        queues: u32,
        /// Build the node with the Linux kernel's own VXLAN device and routes instead of
        /// leaving it for fastpath (the interop peer).
        #[arg(long)]
        kernel_vxlan: bool,
    },
    /// Delete them.
    Down {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load(config: &Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(p) => Config::load(p)?,
        None => Config::default_node(),
    })
}

fn socket_of(t: &Target) -> anyhow::Result<PathBuf> {
    if let Some(s) = &t.socket {
        return Ok(s.clone());
    }
    if let Some(n) = &t.node {
        return Ok(api::socket_path(n));
    }
    let socks: Vec<PathBuf> = std::fs::read_dir("/run/fastpath")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no fastpath is running (no socket in /run/fastpath); start one with `fastpath run`"
        ),
        many => bail!(
            "several nodes are running ({}); choose one with --node",
            many.iter()
                .filter_map(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Print what a policy change did and how long it took to reach every worker.
fn report_policy_change(what: &str, c: api::PolicyChange, out: Output) -> anyhow::Result<()> {
    match out {
        Output::Json => outln!("{}", serde_json::to_string(&c)?),
        Output::Text => outln!(
            "{what}: table generation {}, compiled and published in {} µs, in force on every worker after {} µs",
            c.generation,
            c.compile_us,
            c.applied_us
        ),
    }
    Ok(())
}

/// Errors are printed as one line (`error: what: why: cause`), never with a Rust backtrace
/// whatever `RUST_BACKTRACE` says: they are answers for an operator, not crash reports.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`… | head`): it has what it wanted.
        Err(e) if broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Is `e` (or what caused it) a write to a closed pipe?
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            config,
            queues,
            cores,
            xdp_mode,
            datapath,
            bare,
            socket,
            state_dir,
            run_dir,
        } => {
            let cfg = load(&config)?;
            daemon::run(daemon::RunOptions {
                config: cfg,
                config_path: config.clone(),
                queues,
                cores,
                xdp_mode: xdp_mode.map(|m| match m {
                    ModeArg::Native => XdpMode::Native,
                    ModeArg::Generic => XdpMode::Generic,
                    ModeArg::Auto => XdpMode::Auto,
                }),
                datapath: datapath.map(Into::into),
                bare,
                socket,
                pin_dir: None,
                state_dir: (state_dir.as_os_str() != "/var/lib/fastpath/<node>")
                    .then_some(state_dir),
                run_dir: (run_dir.as_os_str() != "/run/fastpath/<node>").then_some(run_dir),
            })
        }
        Cmd::Status(t) => {
            let sock = socket_of(&t)?;
            match t.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&api::status(&sock)?)?),
                Output::Text => out!("{}", api::text(&sock, api::Request::Status, false)?),
            }
            Ok(())
        }
        Cmd::Bpf {
            what:
                BpfCmd::Lb {
                    what:
                        LbCmd::List {
                            target,
                            frontends,
                            backends,
                            revnat,
                            maglev,
                        },
                },
        } => {
            let view = if frontends {
                api::LbView::Frontends
            } else if backends {
                api::LbView::Backends
            } else if revnat {
                api::LbView::Revnat
            } else if maglev {
                api::LbView::Maglev
            } else {
                api::LbView::Services
            };
            let sock = socket_of(&target)?;
            match target.output {
                Output::Json => {
                    let e = api::list(&sock, api::Request::LbList { view })?;
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&views::endpoint_list_json(&e))?
                    )
                }
                Output::Text => out!(
                    "{}",
                    api::text(&sock, api::Request::LbList { view }, false)?
                ),
            }
            Ok(())
        }
        Cmd::Bpf {
            what: BpfCmd::Ct {
                what: CtCmd::List { scope: _, target },
            },
        } => {
            let (rows, left_out) = api::ct_list(&socket_of(&target)?)?;
            match target.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&rows)?),
                Output::Text => {
                    for r in rows {
                        outln!("{}", r.line);
                    }
                }
            }
            if left_out > 0 {
                eprintln!(
                    "({left_out} more live entries not listed: one listing carries at most {})",
                    fastpath::daemon::MAX_CT_ROWS
                );
            }
            Ok(())
        }
        Cmd::Service {
            what: ServiceCmd::Apply { file, target },
        } => {
            let text = control::yaml::read_file(&file, &control::yaml::SERVICES)
                .with_context(|| format!("reading {}", file.display()))?;
            let services = control::lb::parse_services(&text).with_context(|| {
                format!("{}: not a service or a list of services", file.display())
            })?;
            let n = services.len();
            let g = api::service_apply(&socket_of(&target)?, services)?;
            outln!("{n} service(s) applied (table generation {g})");
            Ok(())
        }
        Cmd::Endpoint {
            what:
                EndpointCmd::Add {
                    name,
                    namespace,
                    ip,
                    ipv6,
                    mac,
                    lxc,
                    id,
                    labels,
                    file,
                    target,
                },
        } => {
            let pod = match file {
                Some(f) => {
                    let text = control::yaml::read_file(&f, &control::yaml::SERVICES)
                        .with_context(|| format!("reading {}", f.display()))?;
                    control::yaml::parse::<control::config::PodConfig>(
                        &text,
                        &control::yaml::SERVICES,
                    )
                    .with_context(|| {
                        format!("{}: not a pod (the fields of a pods: entry)", f.display())
                    })?
                }
                None => {
                    let mut l = std::collections::BTreeMap::new();
                    for kv in labels {
                        let Some((k, v)) = kv.split_once('=') else {
                            anyhow::bail!("--label {kv}: expected KEY=VALUE");
                        };
                        l.insert(k.to_string(), v.to_string());
                    }
                    control::config::PodConfig {
                        name: name.context("--name")?,
                        namespace,
                        ip: ip.context("--ip")?,
                        ipv6,
                        mac: mac.context("--mac")?,
                        lxc: lxc.context("--lxc")?,
                        id,
                        labels: l,
                        netns: None,
                        cni: None,
                    }
                }
            };
            let (row, g) = api::endpoint_add(&socket_of(&target)?, pod)?;
            match target.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&row)?),
                Output::Text => outln!(
                    "endpoint {} {}/{} {} on {} (identity {}) added (table generation {g})",
                    row.id,
                    row.namespace,
                    row.name,
                    row.ipv4,
                    row.lxc,
                    row.identity
                ),
            }
            Ok(())
        }
        Cmd::Datapath {
            what:
                DatapathCmd::Set {
                    device,
                    datapath,
                    target,
                },
        } => {
            let d = api::datapath_set(&socket_of(&target)?, &device, datapath.into())?;
            match target.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&d)?),
                Output::Text => outln!(
                    "{} (ifindex {}): {} datapath{}",
                    d.ifname,
                    d.ifindex,
                    d.datapath,
                    if d.datapath == "xdp" {
                        format!(" ({})", d.xdp_mode)
                    } else {
                        String::new()
                    }
                ),
            }
            Ok(())
        }
        Cmd::Endpoint {
            what: EndpointCmd::Delete { id, target },
        } => {
            let (row, flushed) = api::endpoint_delete(&socket_of(&target)?, &id)?;
            match target.output {
                Output::Json => outln!("{}", serde_json::to_string_pretty(&row)?),
                Output::Text => outln!(
                    "endpoint {} {}/{} {} deleted ({flushed} conntrack entries flushed)",
                    row.id,
                    row.namespace,
                    row.name,
                    row.ipv4
                ),
            }
            Ok(())
        }
        Cmd::Endpoint {
            what: EndpointCmd::List(target),
        } => {
            let sock = socket_of(&target)?;
            match target.output {
                Output::Json => {
                    outln!("{}", serde_json::to_string_pretty(&api::endpoints(&sock)?)?)
                }
                Output::Text => out!("{}", api::text(&sock, api::Request::Endpoints, false)?),
            }
            Ok(())
        }
        Cmd::Service {
            what: ServiceCmd::Delete { id, target },
        } => {
            let id = if id.contains('/') {
                id
            } else {
                format!("default/{id}")
            };
            let g = api::service_delete(&socket_of(&target)?, &id)?;
            outln!("service {id} deleted (table generation {g})");
            Ok(())
        }
        Cmd::Bpf {
            what:
                BpfCmd::Policy {
                    what:
                        BpfPolicyCmd::Get {
                            endpoint,
                            all,
                            numeric,
                            target,
                        },
                },
        } => {
            let sock = socket_of(&target)?;
            let endpoint = if all { None } else { endpoint };
            match target.output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&api::policy_get(&sock, endpoint)?)?
                ),
                Output::Text => out!(
                    "{}",
                    api::text(&sock, api::Request::PolicyGet { endpoint }, numeric)?
                ),
            }
            Ok(())
        }
        Cmd::Policy {
            what: PolicyCmd::Apply { file, target },
        } => {
            let text = control::yaml::read_file(&file, &control::yaml::POLICY)
                .with_context(|| format!("reading {}", file.display()))?;
            // Check locally first: a bad file never reaches the node.
            let ps = control::policy::parse::parse_policies(&text, &file.display().to_string())?;
            let r = api::policy_apply(&socket_of(&target)?, text, file.display().to_string())?;
            report_policy_change(
                &format!("{} policy object(s) applied", ps.len()),
                r,
                target.output,
            )
        }
        Cmd::Policy {
            what: PolicyCmd::Delete { id, target },
        } => {
            let r = api::policy_delete(&socket_of(&target)?, &id)?;
            report_policy_change(&format!("policy {id} deleted"), r, target.output)
        }
        Cmd::Policy {
            what: PolicyCmd::List(target),
        } => {
            let sock = socket_of(&target)?;
            match target.output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&api::policy_list(&sock)?)?
                ),
                Output::Text => out!("{}", api::text(&sock, api::Request::PolicyList, false)?),
            }
            Ok(())
        }
        Cmd::Identity { what } => {
            let (id, target) = match what {
                IdentityCmd::List(t) => (None, t),
                IdentityCmd::Get { id, target } => (Some(id), target),
            };
            let sock = socket_of(&target)?;
            match target.output {
                Output::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&api::identities(&sock, id)?)?
                ),
                Output::Text => {
                    let req = match id {
                        Some(id) => api::Request::IdentityGet { id },
                        None => api::Request::IdentityList,
                    };
                    out!("{}", api::text(&sock, req, false)?)
                }
            }
            Ok(())
        }
        Cmd::Bpf { what } => {
            let (req, t) = match what {
                BpfCmd::Endpoint {
                    what: ListCmd::List(t),
                } => (api::Request::EndpointList, t),
                BpfCmd::Ipcache {
                    what: ListCmd::List(t),
                } => (api::Request::IpcacheList, t),
                BpfCmd::Tunnel {
                    what: ListCmd::List(t),
                } => (api::Request::TunnelList, t),
                BpfCmd::Lb { .. } | BpfCmd::Ct { .. } | BpfCmd::Policy { .. } => {
                    unreachable!("matched above")
                }
            };
            let sock = socket_of(&t)?;
            match t.output {
                Output::Json => {
                    let e = api::list(&sock, req)?;
                    outln!(
                        "{}",
                        serde_json::to_string_pretty(&views::endpoint_list_json(&e))?
                    )
                }
                Output::Text => out!("{}", api::text(&sock, req, false)?),
            }
            Ok(())
        }
        Cmd::Config {
            what: ConfigCmd::Default { node },
        } => {
            let Some((_, y)) = DEMO_CLUSTER.iter().find(|(n, _)| *n == node) else {
                bail!(
                    "no demo node `{node}`; the demo cluster has {}",
                    DEMO_CLUSTER.map(|(n, _)| n).join(", ")
                );
            };
            out!("{y}");
            Ok(())
        }
        Cmd::Config {
            what: ConfigCmd::Check { file },
        } => {
            let c = Config::load(&file)?;
            outln!(
                "{}: ok (node {}, {} pods)",
                file.display(),
                c.node.name,
                c.pods.len()
            );
            Ok(())
        }
        Cmd::Lab {
            what:
                LabCmd::Up {
                    config,
                    queues,
                    kernel_vxlan,
                },
        } => {
            let cfg = load(&config)?;
            let l = if kernel_vxlan {
                lab::Lab::up_kernel_vxlan(&cfg)
            } else {
                lab::Lab::up(&cfg, queues)
            };
            l.context("building the lab topology")?.keep();
            outln!(
                "lab up: node netns {}",
                cfg.node.netns.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        Cmd::Lab {
            what: LabCmd::Down { config },
        } => {
            lab::down(&load(&config)?);
            Ok(())
        }
    }
}
