//! Driving CNI plugins exactly as a runtime (libcni) does: CNI_* environment, the network config
//! on stdin, the result on stdout; chains run in order for ADD and in reverse for DEL, each
//! plugin receiving the previous one's result as `prevResult`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cmd::{LabError, Result, describe};
use crate::netns;

/// Where the plugins live: `CNI_PATH`, in order.
#[derive(Debug, Clone)]
pub struct PluginPath(pub Vec<PathBuf>);

impl PluginPath {
    /// The weft build directory first, then the reference plugins of containernetworking-plugins.
    pub fn with_reference_plugins() -> Self {
        PluginPath(vec![crate::bins::dir(), PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")])
    }

    pub fn find(&self, plugin: &str) -> Result<PathBuf> {
        self.0
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| LabError::Other(format!("CNI plugin {plugin} not found in {:?}", self.0)))
    }

    fn joined(&self) -> String {
        self.0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
    }
}

/// One attachment: what CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME say.
#[derive(Debug, Clone)]
pub struct Target {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

impl Target {
    pub fn new(container_id: &str, netns: &Path, ifname: &str) -> Self {
        Target { container_id: container_id.into(), netns: Some(netns.to_path_buf()), ifname: ifname.into() }
    }
}

/// What a plugin answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// The CNI error code of a failed reply.
    pub fn error_code(&self) -> Option<u64> {
        if self.ok { None } else { self.json()?.get("code")?.as_u64() }
    }

    /// The parsed result of a successful reply, or an error with what the plugin said.
    pub fn result(&self) -> Result<Value> {
        match (self.ok, self.json()) {
            (true, Some(v)) => Ok(v),
            _ => Err(LabError::Other(format!("plugin failed: {} {}", self.stdout.trim(), self.stderr.trim()))),
        }
    }

    /// Success with no output expected (DEL, CHECK, GC, STATUS), or an error with what it said.
    pub fn success(&self) -> Result<()> {
        if self.ok {
            Ok(())
        } else {
            Err(LabError::Other(format!("plugin failed: {} {}", self.stdout.trim(), self.stderr.trim())))
        }
    }
}

/// A runtime on one node: which plugins it can run and the node's network namespace, which the
/// plugin process enters (as it would run in the node's own namespace on a real machine).
#[derive(Debug, Clone)]
pub struct Runtime {
    pub path: PluginPath,
    pub node_netns: PathBuf,
}

impl Runtime {
    pub fn new(path: PluginPath, node_netns: &Path) -> Self {
        Runtime { path, node_netns: node_netns.to_path_buf() }
    }

    /// Runs one plugin once. `target` is `None` for VERSION, GC and STATUS.
    pub fn exec(&self, plugin: &str, command: &str, target: Option<&Target>, config: &Value) -> Result<Reply> {
        let mut cmd = self.command(plugin)?;
        cmd.env("CNI_COMMAND", command);
        if let Some(t) = target {
            cmd.env("CNI_CONTAINERID", &t.container_id).env("CNI_IFNAME", &t.ifname);
            if let Some(netns) = &t.netns {
                cmd.env("CNI_NETNS", netns);
            }
        }
        self.run(&mut cmd, config.to_string().as_bytes())
    }

    /// The plugin process with only CNI_PATH and PATH set; callers add the CNI_* variables
    /// (tests also hand-craft broken ones) and start it with [`Runtime::run`].
    pub fn command(&self, plugin: &str) -> Result<Command> {
        let mut cmd = Command::new(self.path.find(plugin)?);
        cmd.env_clear()
            .env("CNI_PATH", self.path.joined())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    /// Starts the plugin in the node's namespace, feeds it `stdin` and collects its answer.
    pub fn run(&self, cmd: &mut Command, stdin: &[u8]) -> Result<Reply> {
        let start = Instant::now();
        let child = self.spawn(cmd)?;
        finish(cmd, child, stdin, start)
    }
}

/// Runs a prepared command where it is, feeding it `stdin` and collecting its answer.
pub fn exec_with_stdin(cmd: &mut Command, stdin: &[u8]) -> Result<Reply> {
    let start = Instant::now();
    let child = cmd.spawn().map_err(|source| LabError::Spawn { cmd: describe(cmd), source })?;
    finish(cmd, child, stdin, start)
}

fn finish(cmd: &Command, mut child: std::process::Child, stdin: &[u8], start: Instant) -> Result<Reply> {
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // A plugin may exit without reading all of stdin; its answer still counts.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    let out = child.wait_with_output().map_err(|source| LabError::Spawn { cmd: describe(cmd), source })?;
    Ok(Reply {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    })
}

impl Runtime {
    /// Starts the plugin in the node's namespace without waiting for it (fault tests kill it).
    pub fn spawn(&self, cmd: &mut Command) -> Result<std::process::Child> {
        netns::within(&self.node_netns, || cmd.spawn())?
            .map_err(|source| LabError::Spawn { cmd: describe(cmd), source })
    }
}

/// A network configuration list, run the way libcni runs it.
#[derive(Debug, Clone)]
pub struct Chain {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl Chain {
    pub fn from_conflist(conflist: &Value) -> Result<Chain> {
        let bad = || LabError::Other(format!("not a conflist: {conflist}"));
        Ok(Chain {
            name: conflist["name"].as_str().ok_or_else(bad)?.to_string(),
            cni_version: conflist["cniVersion"].as_str().ok_or_else(bad)?.to_string(),
            plugins: conflist["plugins"].as_array().ok_or_else(bad)?.clone(),
        })
    }

    /// A plugin's config as the runtime passes it: its entry plus name, cniVersion, prevResult.
    fn config(&self, plugin: &Value, prev: Option<&Value>, runtime_config: &Value) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(self.name);
        conf["cniVersion"] = json!(self.cni_version);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        // libcni passes only the runtime config keys the plugin declared as capabilities.
        if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
            let mut rc = serde_json::Map::new();
            for (key, enabled) in caps {
                if enabled.as_bool() == Some(true) && !runtime_config[key].is_null() {
                    rc.insert(key.clone(), runtime_config[key].clone());
                }
            }
            if !rc.is_empty() {
                conf["runtimeConfig"] = Value::Object(rc);
            }
        }
        conf
    }

    /// ADD through every plugin in order; the final result (what a runtime caches).
    pub fn add(&self, rt: &Runtime, target: &Target, runtime_config: &Value) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for plugin in &self.plugins {
            let conf = self.config(plugin, prev.as_ref(), runtime_config);
            prev = Some(rt.exec(plugin_type(plugin), "ADD", Some(target), &conf)?.result()?);
        }
        prev.ok_or_else(|| LabError::Other("empty chain".into()))
    }

    /// DEL through every plugin in reverse, with the cached result as prevResult.
    pub fn del(&self, rt: &Runtime, target: &Target, cached: Option<&Value>, runtime_config: &Value) -> Result<()> {
        for plugin in self.plugins.iter().rev() {
            let conf = self.config(plugin, cached, runtime_config);
            rt.exec(plugin_type(plugin), "DEL", Some(target), &conf)?.success()?;
        }
        Ok(())
    }
}

fn plugin_type(plugin: &Value) -> &str {
    plugin["type"].as_str().unwrap_or_default()
}
