//! The server's control socket, `<data-dir>/server/control.sock` (mode 0600, so only the
//! data directory's owner may use it): what a local operator asks the running server of
//! that data directory (`ferrokube secrets-encrypt ...`, `ferrokube snapshot save`, `ferrokube token ...`). One JSON request line
//! (`{"command": "secrets-encrypt", "action": "status"}`), one JSON answer line
//! (`{"ok": true, "output": "..."}` or `{"ok": false, "error": "..."}`).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Requests larger than this are refused.
const MAX_REQUEST: usize = 64 * 1024;

/// The control socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("server").join("control.sock")
}

/// What the socket serves.
pub struct Handler {
    pub encryption: Arc<crate::encryption::Encryption>,
    pub store: crate::store::Store,
    pub data_dir: PathBuf,
    /// The server's own client (for `token` commands) and the cluster CA they pin.
    pub client: crate::runtime::Client,
    pub ca_pem: String,
}

impl Handler {
    async fn answer(&self, req: &Value) -> Result<String, String> {
        match req["command"].as_str() {
            Some("secrets-encrypt") => {
                let action = req["action"].as_str().unwrap_or("");
                let action = crate::encryption::Action::parse(action).ok_or_else(|| format!("unknown secrets-encrypt action {action:?}: use status, enable, disable or rotate-keys"))?;
                self.encryption.run(action).await.map_err(|e| e.to_string())
            }
            Some("snapshot-save") => {
                let name = req["name"].as_str().unwrap_or(crate::snapshot::ON_DEMAND).to_string();
                let (store, dir) = (self.store.clone(), self.data_dir.clone());
                let (path, rev) = tokio::task::spawn_blocking(move || crate::snapshot::save(&store, &dir, &name))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(format!("snapshot {} saved (revision {rev})", path.display()))
            }
            Some("token-create") => crate::jointokens::create(&self.client, &self.ca_pem, req).await,
            Some("token-list") => crate::jointokens::list(&self.client).await,
            Some("token-delete") => crate::jointokens::delete(&self.client, req).await,
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

/// Serves the socket at `path` until `scope` ends (then removes it).
pub async fn serve(path: PathBuf, handler: Arc<Handler>, scope: crate::runtime::Scope) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = scope.cancelled() => break,
        };
        let Ok((stream, _)) = conn else { continue };
        let handler = handler.clone();
        scope.spawn(async move {
            if let Err(e) = one(stream, &handler).await {
                tracing::debug!(error = %e, "control connection");
            }
        });
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn one(stream: tokio::net::UnixStream, handler: &Handler) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST as u64);
    reader.read_line(&mut line).await?;
    let answer = match serde_json::from_str::<Value>(&line) {
        Ok(req) => match handler.answer(&req).await {
            Ok(output) => json!({"ok": true, "output": output}),
            Err(error) => json!({"ok": false, "error": error}),
        },
        Err(e) => json!({"ok": false, "error": format!("the request is not JSON: {e}")}),
    };
    let mut out = serde_json::to_vec(&answer).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Whether a server of `data_dir` answers on its control socket.
pub fn running(data_dir: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(data_dir)).is_ok()
}

/// Asks the server of `data_dir`: its output, or an error that says what to do.
pub fn call(data_dir: &Path, req: &Value) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let path = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("no ferrokube server is running on data directory {} (no control socket at {}): start `ferrokube server --data-dir {}` first", data_dir.display(), path.display(), data_dir.display())
        }
        std::io::ErrorKind::PermissionDenied => format!("{}: permission denied (run as the user that runs the server, usually root)", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    std::io::BufReader::new(stream).read_line(&mut answer).map_err(|e| e.to_string())?;
    let answer: Value = serde_json::from_str(&answer).map_err(|_| "the server closed the control connection without an answer".to_string())?;
    if answer["ok"] == true {
        Ok(answer["output"].as_str().unwrap_or("").to_string())
    } else {
        Err(answer["error"].as_str().unwrap_or("the server refused").to_string())
    }
}
