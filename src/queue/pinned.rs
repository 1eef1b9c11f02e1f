//! Targets the operator pins messages to (`mailqueue requeue --target
//! URL`): built on first use by the embedder's builder (the daemon's
//! builds them as its configuration says), kept for the next message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::delivery::DeliveryTarget;

/// Builds the target a URL names (`smtp://host:port`, ...), or says why
/// it cannot.
pub type BuildTarget = dyn Fn(&str) -> Result<Arc<dyn DeliveryTarget>, String> + Send + Sync;

/// Most pinned targets kept built; past it they are built again. An
/// operator pins a handful; the bound only keeps a mistake cheap.
const MAX_BUILT: usize = 64;

#[derive(Default)]
pub(crate) struct PinnedTargets {
    build: RwLock<Option<Arc<BuildTarget>>>,
    built: Mutex<HashMap<String, Arc<dyn DeliveryTarget>>>,
}

impl PinnedTargets {
    /// Replaces the builder; targets built by the old one are dropped
    /// (a reload changes the settings they were built with).
    pub(crate) fn set_builder(&self, build: Arc<BuildTarget>) {
        *self.build.write().unwrap_or_else(|p| p.into_inner()) = Some(build);
        self.built.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The target `url` names.
    pub(crate) fn get(&self, url: &str) -> Result<Arc<dyn DeliveryTarget>, String> {
        if let Some(t) = self
            .built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
        {
            return Ok(Arc::clone(t));
        }
        let build = self
            .build
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or("this queue cannot build targets from a URL")?;
        let target = build(url)?;
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if built.len() >= MAX_BUILT {
            built.clear();
        }
        built.insert(url.to_string(), Arc::clone(&target));
        Ok(target)
    }
}
