//! Shared watches. Components register the collections they follow and what to do with each
//! change; [`Informers::run`] then starts one watcher and one cache per collection for all of
//! them, so a pod event is decoded and stored once however many components care about pods.
//! Subscribers run after the cache holds the change, so they may read the cache. Whole
//! objects are kept only for collections whose cache somebody asked for; the others keep
//! stubs (identity, labels, owners), enough to report what a relist found deleted.

use super::cache::{Cache, Change, IndexFn};
use super::client::Client;
use super::task::Scope;
use super::watcher;
use crate::vocab::resource::Target;
use std::collections::BTreeMap;

/// What a subscriber does with one change.
pub type Handler = Box<dyn Fn(&Change) + Send + Sync>;

struct Entry {
    target: Target,
    cache: Cache,
    handlers: Vec<Handler>,
}

/// The collections followed, with their caches and subscribers.
#[derive(Default)]
pub struct Informers {
    entries: BTreeMap<String, Entry>,
}

impl Informers {
    pub fn new() -> Informers {
        Informers::default()
    }

    fn entry(&mut self, target: &Target) -> &mut Entry {
        self.entries.entry(target.to_string()).or_insert_with(|| Entry { target: target.clone(), cache: Cache::stubs(), handlers: Vec::new() })
    }

    /// The shared cache of `target`, keeping [`crate::runtime::cache::stub`]s (identity,
    /// labels, owners) unless another user of it wants whole objects.
    pub fn stubs(&mut self, target: &Target) -> Cache {
        self.entry(target).cache.clone()
    }

    /// The shared cache of `target`, keeping whole objects.
    pub fn cache(&mut self, target: &Target) -> Cache {
        let cache = self.entry(target).cache.clone();
        cache.keep_objects(true);
        cache
    }

    /// The shared cache of `target` with index `name` (added if not there yet).
    pub fn indexed(&mut self, target: &Target, name: &'static str, f: IndexFn) -> Cache {
        let cache = self.cache(target);
        if cache.has_index(name) {
            cache
        } else {
            let cache = cache.with_index(name, f);
            self.entry(target).cache = cache.clone();
            cache
        }
    }

    /// Calls `handler` for every change of `target`.
    pub fn on<F>(&mut self, target: &Target, handler: F)
    where
        F: Fn(&Change) + Send + Sync + 'static,
    {
        self.entry(target).handlers.push(Box::new(handler));
    }

    /// Starts one watcher per collection in `scope`.
    pub fn run(self, client: &Client, scope: &Scope) {
        for (_, e) in self.entries {
            let (client, cache, handlers) = (client.clone(), e.cache, e.handlers);
            scope.spawn(watcher::run(client, e.target, move |ev| {
                for change in cache.apply(ev) {
                    for h in &handlers {
                        h(&change);
                    }
                }
            }));
        }
    }
}

/// Follows one collection on its own: its cache, with `handler` called on every change.
pub fn follow<F>(client: &Client, target: Target, scope: &Scope, handler: F) -> Cache
where
    F: Fn(&Change) + Send + Sync + 'static,
{
    let mut i = Informers::new();
    i.on(&target, handler);
    let cache = i.cache(&target);
    i.run(client, scope);
    cache
}
