//! The embedded pod infra image (built from `pause/pause.c` by `build.rs`).

/// The image as an OCI image layout archive.
pub const ARCHIVE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pause.tar"));

/// The name it is imported under; containerd's sandbox image.
pub const IMAGE: &str = include_str!(concat!(env!("OUT_DIR"), "/pause-image-name"));
