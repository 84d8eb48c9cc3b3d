//! Task scopes. Every long-running task is spawned in a [`Scope`]; stopping a scope cancels
//! its tasks and those of its child scopes, then waits until all of them have ended. A
//! component is started in a scope and stopped by stopping that scope, which is how the
//! server shuts down in order and how a test starts and stops one component.

use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of tasks that end together.
#[derive(Clone, Default)]
pub struct Scope {
    token: CancellationToken,
    tracker: TaskTracker,
    children: Arc<Mutex<Vec<Scope>>>,
}

impl Scope {
    pub fn new() -> Scope {
        Scope::default()
    }

    /// A scope cancelled with this one (and stoppable on its own).
    pub fn child(&self) -> Scope {
        let child = Scope { token: self.token.child_token(), tracker: TaskTracker::new(), children: Default::default() };
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        // Children stopped earlier (a lost leader term, say) are forgotten.
        children.retain(|c| !(c.token.is_cancelled() && c.tracker.is_empty()));
        children.push(child.clone());
        child
    }

    /// Runs `task` until it finishes or the scope is cancelled (then it is dropped at its
    /// next await point).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs `task` to completion even when the scope is cancelled: for work that must not be
    /// cut short (it watches [`Scope::cancelled`] itself). [`Scope::stop`] waits for it.
    pub fn spawn_graceful<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the scope is cancelled.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Cancels every task of this scope and its children, and waits until they have ended.
    pub async fn stop(&self) {
        self.token.cancel();
        self.wait().await;
    }

    fn wait(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let children: Vec<Scope> = self.children.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for c in &children {
                c.wait().await;
            }
            self.tracker.close();
            self.tracker.wait().await;
            self.tracker.reopen();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn stop_cancels_tasks_of_the_scope_and_its_children_and_waits() {
        let root = Scope::new();
        let child = root.child();
        let ended = Arc::new(AtomicUsize::new(0));
        for s in [&root, &child] {
            let e = ended.clone();
            s.spawn(async move {
                struct Count(Arc<AtomicUsize>);
                impl Drop for Count {
                    fn drop(&mut self) {
                        self.0.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let _c = Count(e);
                std::future::pending::<()>().await;
            });
        }
        let e = ended.clone();
        let c = child.clone();
        child.spawn_graceful(async move {
            c.cancelled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            e.fetch_add(1, Ordering::SeqCst);
        });
        // Let the tasks start (a task never polled holds nothing to drop).
        tokio::time::sleep(Duration::from_millis(20)).await;
        tokio::time::timeout(Duration::from_secs(5), root.stop()).await.expect("stop returns");
        assert_eq!(ended.load(Ordering::SeqCst), 3, "both pending tasks dropped and the graceful one finished");
        assert!(child.is_cancelled());
    }

    #[tokio::test]
    async fn a_child_stops_alone() {
        let root = Scope::new();
        let child = root.child();
        child.spawn(std::future::pending());
        child.stop().await;
        assert!(child.is_cancelled());
        assert!(!root.is_cancelled());
    }
}
