//! OCI images built by hand, for runtimes that cannot pull: a layer as a tar of files, and the
//! image as an OCI image-layout tarball that `ctr images import` takes.

use serde_json::json;
use sha2::{Digest, Sha256};

/// One entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir(String),
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
}

/// The layer of a sandbox ("pause") image: busybox as /bin/sh, /bin/sleep and the tools tests
/// run, and `/pause`, which sleeps until killed.
pub fn pause_layer(busybox: Vec<u8>) -> Vec<Entry> {
    let mut entries: Vec<Entry> = ["bin", "dev", "etc", "proc", "sys", "tmp"].map(|d| Entry::Dir(d.into())).into();
    entries.push(Entry::File { path: "bin/busybox".into(), mode: 0o755, data: busybox });
    for tool in ["sh", "sleep", "ip", "ping", "nc", "cat"] {
        entries.push(Entry::Symlink { path: format!("bin/{tool}"), target: "busybox".into() });
    }
    let pause = b"#!/bin/sh\nexec sleep 2147483647\n".to_vec();
    entries.push(Entry::File { path: "pause".into(), mode: 0o755, data: pause });
    entries
}

/// A tar archive (ustar) of `entries`, owned by root, dated at the epoch.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let (path, mode, kind, data, link): (&str, u32, u8, &[u8], &str) = match entry {
            Entry::Dir(path) => (path, 0o755, b'5', &[], ""),
            Entry::File { path, mode, data } => (path, *mode, b'0', data, ""),
            Entry::Symlink { path, target } => (path, 0o777, b'2', &[], target),
        };
        out.extend_from_slice(&header(path, mode, kind, data.len(), link));
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn header(path: &str, mode: u32, kind: u8, size: usize, link: &str) -> [u8; 512] {
    assert!(path.len() < 100 && link.len() < 100, "tar names over 100 bytes are not supported: {path}");
    let mut h = [0u8; 512];
    let mut put = |at: usize, bytes: &[u8]| h[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, path.as_bytes());
    put(100, format!("{mode:07o}\0").as_bytes());
    put(108, b"0000000\0");
    put(116, b"0000000\0");
    put(124, format!("{size:011o}\0").as_bytes());
    put(136, b"00000000000\0");
    put(148, b"        ");
    put(156, &[kind]);
    put(157, link.as_bytes());
    put(257, b"ustar\0");
    put(263, b"00");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// The OCI architecture name of this machine.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An image-layout tarball of a one-layer image named `name` (a full reference such as
/// `weft.test/pause:1`) whose entrypoint is `entrypoint`.
pub fn image_archive(name: &str, layer: &[u8], entrypoint: &[&str]) -> Vec<u8> {
    let platform = json!({"architecture": architecture(), "os": "linux"});
    let config = json!({
        "architecture": architecture(), "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
    })
    .to_string()
    .into_bytes();
    let descriptor = |media: &str, data: &[u8]| json!({"mediaType": media, "digest": digest(data), "size": data.len()});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
    })
    .to_string()
    .into_bytes();
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["platform"] = platform;
    entry["annotations"] = json!({"io.containerd.image.name": name});
    let index = json!({"schemaVersion": 2, "manifests": [entry]}).to_string().into_bytes();
    let blob = |data: &[u8]| Entry::File {
        path: format!("blobs/{}", digest(data).replace(':', "/")),
        mode: 0o644,
        data: data.to_vec(),
    };
    tar(&[
        Entry::File { path: "oci-layout".into(), mode: 0o644, data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec() },
        Entry::Dir("blobs".into()),
        Entry::Dir("blobs/sha256".into()),
        blob(&config),
        blob(layer),
        blob(&manifest),
        Entry::File { path: "index.json".into(), mode: 0o644, data: index },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_is_whole_blocks_with_a_valid_checksum_and_two_zero_blocks_at_the_end() {
        let out = tar(&[
            Entry::File { path: "a".into(), mode: 0o644, data: b"hello".to_vec() },
            Entry::Symlink { path: "b".into(), target: "a".into() },
        ]);
        assert_eq!(out.len(), 512 * 5);
        let h = &out[..512];
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let sum: u32 =
            h.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { 32 } else { u32::from(*b) }).sum();
        assert_eq!(stored, sum);
        assert_eq!(&h[124..135], b"00000000005");
        assert_eq!(&out[512..517], b"hello");
        assert_eq!((out[1024 + 156], &out[1024 + 157..1024 + 158]), (b'2', &b"a"[..]));
        assert!(out[1536..].iter().all(|b| *b == 0));
    }

    #[test]
    fn the_archive_names_the_image_and_holds_every_blob_it_refers_to() {
        let layer = tar(&[Entry::Dir("bin".into())]);
        let archive = image_archive("weft.test/pause:1", &layer, &["/pause"]);
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains(r#""io.containerd.image.name":"weft.test/pause:1""#));
        let layer_hex = digest(&layer).trim_start_matches("sha256:").to_string();
        assert!(text.contains(&format!("blobs/sha256/{layer_hex}")));
        assert!(text.contains(&format!(r#""diff_ids":["sha256:{layer_hex}"]"#)));
    }

    #[test]
    fn the_pause_layer_runs_sleep_from_busybox() {
        let layer = pause_layer(b"ELF".to_vec());
        assert!(layer.contains(&Entry::Symlink { path: "bin/sleep".into(), target: "busybox".into() }));
        assert!(layer.iter().any(|e| matches!(e, Entry::File { path, data, .. } if path == "pause" && data.starts_with(b"#!/bin/sh\nexec sleep"))));
    }
}
