//! The host side of the plugin ABI (`stagewise_plugin::abi`): loading a library, the
//! handshake, and calls into it. All of core's `unsafe` is here but the flight recorder's
//! memory map; everything it hands out ([`Plugin`], [`Instance`]) is safe to use.
//!
//! Libraries are loaded once per canonical path and never unloaded: a plugin's code may still
//! run on an abandoned pool thread, its statics may be referenced by instances, and unloading
//! Rust code with thread-local destructors is unsound. A library that fails the handshake is
//! kept too, since its initializers have run.

// Calls into a foreign library: every unsafe block below says which part of the ABI contract
// (documented in `stagewise_plugin::abi`) makes it sound.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use stagewise_plugin::abi::{self, Buffer, CallContext, PluginTable, Reply, Slice};

use crate::stage::Record;
use crate::stage::{Context, Outcome, StageError};

/// Most kinds a library may declare: a bound on what the host reads from its table.
const MAX_KINDS: usize = 1024;

/// What a plugin library says about itself.
#[derive(Debug, Clone)]
pub struct PluginInfo {
    /// The library, as found.
    pub path: PathBuf,
    /// The plugin's name (its package name).
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The ABI version it was built with (the host's own, once loaded).
    pub abi_version: u32,
    /// The kinds of stage it offers.
    pub kinds: Vec<KindInfo>,
}

/// One kind of stage a plugin offers.
#[derive(Debug, Clone)]
pub struct KindInfo {
    /// Its name (`plugin_kind = "…"`).
    pub name: String,
    /// One line saying what it does (may be empty).
    pub description: String,
    /// The JSON Schema of its keys.
    pub config_schema: serde_json::Value,
}

/// A library that cannot be used as a plugin.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    /// The file is missing or unreadable.
    #[error("cannot open plugin `{path}`: {message}")]
    Open {
        /// The path as given.
        path: String,
        /// Why.
        message: String,
    },
    /// The file is not a shared library the system can load.
    #[error("`{path}` is not a loadable library: {message}")]
    NotALibrary {
        /// The path as given.
        path: String,
        /// The loader's message.
        message: String,
    },
    /// A library without the entry point.
    #[error(
        "`{path}` is not a stagewise plugin: it does not export `{}`",
        abi::ENTRY_SYMBOL
    )]
    NoEntryPoint {
        /// The path as given.
        path: String,
    },
    /// Built against another version of the ABI.
    #[error("plugin `{path}` was built for plugin ABI version {found}, but this stagewise speaks plugin ABI version {expected}: rebuild the plugin against a stagewise-plugin of ABI version {expected}")]
    AbiMismatch {
        /// The path as given.
        path: String,
        /// The plugin's ABI version.
        found: u32,
        /// The host's ABI version.
        expected: u32,
    },
    /// The table is unusable.
    #[error("plugin `{path}` is broken: {message}")]
    Malformed {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The functions of a checked table.
#[derive(Clone, Copy)]
struct Fns {
    create: abi::CreateFn,
    process: abi::ProcessFn,
    destroy: abi::DestroyFn,
    free_buffer: abi::FreeBufferFn,
}

/// A loaded, checked plugin library.
pub(crate) struct Plugin {
    pub info: PluginInfo,
    fns: Fns,
}

/// Plugins loaded so far, by canonical path.
static LOADED: Mutex<Option<HashMap<PathBuf, Arc<Plugin>>>> = Mutex::new(None);

/// Load the plugin at `path` (once per process; later calls get the same one). `shown` is the
/// path as the user wrote it, for messages.
pub(crate) fn load(path: &Path, shown: &str) -> Result<Arc<Plugin>, LoadError> {
    let open = |message: String| LoadError::Open {
        path: shown.to_owned(),
        message,
    };
    let canonical = std::fs::canonicalize(path).map_err(|e| open(e.to_string()))?;
    if !canonical.is_file() {
        return Err(open("not a file".to_owned()));
    }
    // A poisoned lock only means a load panicked; the map itself is always consistent.
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let loaded = loaded.get_or_insert_with(HashMap::new);
    if let Some(plugin) = loaded.get(&canonical) {
        return Ok(plugin.clone());
    }
    let plugin = Arc::new(load_new(&canonical, shown)?);
    loaded.insert(canonical, plugin.clone());
    Ok(plugin)
}

fn load_new(path: &Path, shown: &str) -> Result<Plugin, LoadError> {
    let malformed = |message: String| LoadError::Malformed {
        path: shown.to_owned(),
        message,
    };
    // SAFETY: loading a library runs its initializers; that is what loading a plugin means,
    // and the user named this file as one. Nothing else is assumed about it yet.
    let library =
        unsafe { libloading::Library::new(path) }.map_err(|e| LoadError::NotALibrary {
            path: shown.to_owned(),
            message: loader_message(&e),
        })?;
    // Never unloaded (see the module docs), whatever happens next.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is the ABI's `EntryFn`; a library that exports the name with
    // another type breaks the ABI, which the version check below is there to catch as far as
    // anything can.
    let entry: abi::EntryFn =
        match unsafe { library.get::<abi::EntryFn>(abi::ENTRY_SYMBOL.as_bytes()) } {
            Ok(symbol) => *symbol,
            Err(_) => {
                return Err(LoadError::NoEntryPoint {
                    path: shown.to_owned(),
                })
            }
        };
    // SAFETY: the entry point takes nothing and returns a pointer (or null); the SDK's
    // implementation catches its own panics.
    let table: *const PluginTable = unsafe { entry() };
    if table.is_null() {
        return Err(malformed(
            "its entry point returned no table (describing its kinds failed; its own tests with `stagewise_plugin::testing` should show why)".to_owned(),
        ));
    }
    // SAFETY: every version of the ABI starts its table with a `u32` version; only that is
    // read before the version is known to be ours. Unaligned read: nothing about a foreign
    // table's alignment is trusted yet.
    let found = unsafe { table.cast::<u32>().read_unaligned() };
    if found != abi::ABI_VERSION {
        return Err(LoadError::AbiMismatch {
            path: shown.to_owned(),
            found,
            expected: abi::ABI_VERSION,
        });
    }
    if !table.is_aligned() {
        return Err(malformed("its table is not aligned".to_owned()));
    }
    // SAFETY: the version matches, so the pointer is to a `PluginTable` of this ABI (aligned,
    // checked above), which lives as long as the (never unloaded) library.
    let table: &'static PluginTable = unsafe { &*table };
    let (Some(create), Some(process), Some(destroy), Some(free_buffer)) = (
        table.create,
        table.process,
        table.destroy,
        table.free_buffer,
    ) else {
        return Err(malformed("its table lacks a function".to_owned()));
    };
    let text = |s: Slice, what: &str| -> Result<String, LoadError> {
        // SAFETY: the table's strings live as long as the library (ABI contract).
        let bytes = unsafe { s.as_bytes() };
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(format!("its {what} is not UTF-8")))
    };
    if table.kinds_len == 0 || table.kinds_len > MAX_KINDS {
        return Err(malformed(format!(
            "it declares {} kinds (1 to {MAX_KINDS} expected)",
            table.kinds_len
        )));
    }
    if table.kinds.is_null() || !table.kinds.is_aligned() {
        return Err(malformed(
            "its list of kinds is missing or misplaced".to_owned(),
        ));
    }
    // SAFETY: `kinds` points to `kinds_len` entries that live as long as the library.
    let kinds = unsafe { std::slice::from_raw_parts(table.kinds, table.kinds_len) };
    let mut infos: Vec<KindInfo> = Vec::with_capacity(kinds.len());
    for kind in kinds {
        let name = text(kind.name, "kind name")?;
        if name.is_empty() || infos.iter().any(|k| k.name == name) {
            return Err(malformed(format!(
                "its kind name `{name}` is empty or repeated"
            )));
        }
        let schema = text(kind.config_schema, "config schema")?;
        let config_schema: serde_json::Value = serde_json::from_str(&schema).map_err(|e| {
            malformed(format!(
                "the config schema of kind `{name}` is not JSON: {e}"
            ))
        })?;
        if !config_schema.is_object() {
            return Err(malformed(format!(
                "the config schema of kind `{name}` is not a JSON object"
            )));
        }
        infos.push(KindInfo {
            description: text(kind.description, "description")?,
            name,
            config_schema,
        });
    }
    Ok(Plugin {
        info: PluginInfo {
            path: path.to_path_buf(),
            name: text(table.plugin_name, "name")?,
            version: text(table.plugin_version, "version")?,
            abi_version: found,
            kinds: infos,
        },
        fns: Fns {
            create,
            process,
            destroy,
            free_buffer,
        },
    })
}

/// The loader's message without the path it repeats.
fn loader_message(e: &libloading::Error) -> String {
    let message = e.to_string();
    match message.rsplit_once(": ") {
        Some((_, tail)) if !tail.is_empty() => tail.to_owned(),
        _ => message,
    }
}

impl Plugin {
    /// Copy a buffer the plugin allocated, and give it back.
    fn take(&self, buffer: Buffer) -> Vec<u8> {
        if buffer.ptr.is_null() {
            // The empty buffer: nothing was allocated, nothing to give back.
            return Vec::new();
        }
        // SAFETY: the buffer came from this plugin and is freed exactly once, here.
        let bytes = unsafe { buffer.as_bytes() }.to_vec();
        // SAFETY: as above.
        unsafe { (self.fns.free_buffer)(buffer) };
        bytes
    }

    /// Make an instance of `kind` from `config` (a JSON object).
    pub(crate) fn create(
        self: &Arc<Self>,
        kind: &str,
        config: &serde_json::Value,
    ) -> Result<Instance, String> {
        let config = config.to_string();
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut error = Buffer::EMPTY;
        // SAFETY: the slices are valid for the call, the out-pointers point to writable locals.
        let code = unsafe {
            (self.fns.create)(
                Slice::new(kind.as_bytes()),
                Slice::new(config.as_bytes()),
                &mut instance,
                &mut error,
            )
        };
        // Whatever the code, an error buffer the plugin wrote is given back.
        let message = String::from_utf8_lossy(&self.take(error)).into_owned();
        if code == abi::CREATE_OK && !instance.is_null() {
            return Ok(Instance {
                plugin: self.clone(),
                ptr: instance,
            });
        }
        if !instance.is_null() {
            // An instance made and then disowned by an error code: destroyed, not leaked.
            // SAFETY: it came from this plugin's `create` and is destroyed once, here.
            unsafe { (self.fns.destroy)(instance) };
        }
        Err(match code {
            abi::REPLY_PANIC => format!("panicked: {message}"),
            abi::CREATE_OK => "it returned no instance".to_owned(),
            _ => message,
        })
    }
}

/// One stage's instance inside a plugin.
pub(crate) struct Instance {
    plugin: Arc<Plugin>,
    ptr: *mut c_void,
}

// SAFETY: the ABI lets the host call `process` on one instance from several threads at once
// (the SDK requires `Stage: Send + Sync`), and `destroy` from any thread once calls are over.
unsafe impl Send for Instance {}
// SAFETY: as above.
unsafe impl Sync for Instance {}

/// What the host callbacks get behind their opaque pointer: valid during one call.
struct CallHost<'a> {
    cx: &'a Context,
    plugin: &'a str,
}

impl Instance {
    /// One attempt. A panic inside the plugin is raised again here, so that the runner treats
    /// it exactly like a builtin stage's panic (the item fails with the message).
    pub(crate) fn process(&self, record: &Record, cx: &Context) -> Result<Outcome, StageError> {
        let json = serde_json::to_vec(record)
            .map_err(|e| StageError::permanent(format!("cannot serialize the record: {e}")))?;
        let host = CallHost {
            cx,
            plugin: &self.plugin.info.name,
        };
        let call = CallContext {
            key: Slice::new(cx.key().as_bytes()),
            stage: Slice::new(cx.stage().as_bytes()),
            attempt: cx.attempt(),
            remaining_ms: u64::try_from(cx.remaining().as_millis()).unwrap_or(u64::MAX),
            host: (&host as *const CallHost<'_>).cast::<c_void>(),
            is_cancelled: Some(host_is_cancelled),
            log: Some(host_log),
        };
        let mut reply = Reply {
            code: u32::MAX,
            retry_after_ms: abi::NO_RETRY_AFTER,
            body: Buffer::EMPTY,
        };
        // SAFETY: `ptr` is a live instance of this plugin (destroyed only on drop, after every
        // call, since calls borrow `self`); the record, context and reply outlive the call.
        unsafe {
            (self.plugin.fns.process)(self.ptr, Slice::new(&json), &call, &mut reply);
        }
        let retry_after = (reply.retry_after_ms != abi::NO_RETRY_AFTER)
            .then(|| std::time::Duration::from_millis(reply.retry_after_ms));
        let code = reply.code;
        if code == abi::REPLY_CONTINUE {
            // Parsed from the plugin's buffer before it is given back: no copy.
            // SAFETY: the body came from this plugin; it is freed once, right after.
            let parsed = serde_json::from_slice::<Record>(unsafe { reply.body.as_bytes() });
            // SAFETY: as above.
            unsafe { (self.plugin.fns.free_buffer)(reply.body) };
            return parsed.map(Outcome::Continue).map_err(|e| {
                StageError::permanent(format!("the plugin answered with an invalid record: {e}"))
            });
        }
        let text = String::from_utf8_lossy(&self.plugin.take(reply.body)).into_owned();
        let error = match code {
            abi::REPLY_SKIP => return Ok(Outcome::Skip { reason: text }),
            abi::REPLY_TRANSIENT => StageError::transient(text),
            abi::REPLY_PERMANENT => StageError::permanent(text),
            abi::REPLY_FATAL => StageError::fatal(text),
            abi::REPLY_PANIC => std::panic::resume_unwind(Box::new(text)),
            other => StageError::permanent(format!(
                "the plugin answered with the unknown reply code {other}"
            )),
        };
        Err(match retry_after {
            Some(delay) => error.with_retry_after(delay),
            None => error,
        })
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: the instance came from `create` and this is its one `destroy`; no call is
        // running, as calls borrow the instance.
        unsafe { (self.plugin.fns.destroy)(self.ptr) };
    }
}

/// # Safety
///
/// `host` is the `CallHost` of a call in progress (ABI contract: callbacks are used during
/// the call only).
unsafe extern "C" fn host_is_cancelled(host: *const c_void) -> u32 {
    if host.is_null() {
        return 1;
    }
    // SAFETY: see the function's contract.
    let host = unsafe { &*host.cast::<CallHost<'_>>() };
    // Nothing here can panic, but a panic must never leave an `extern "C"` function.
    let cancelled = catch_unwind(AssertUnwindSafe(|| host.cx.is_cancelled())).unwrap_or(true);
    u32::from(cancelled)
}

/// # Safety
///
/// As [`host_is_cancelled`]; `message` is valid for the call.
unsafe extern "C" fn host_log(host: *const c_void, level: u32, message: Slice) {
    if host.is_null() {
        return;
    }
    // SAFETY: see the function's contract.
    let (host, message) = unsafe { (&*host.cast::<CallHost<'_>>(), message.as_bytes()) };
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let message = String::from_utf8_lossy(message);
        let (stage, key, plugin) = (host.cx.stage(), host.cx.key(), host.plugin);
        match level {
            abi::LOG_ERROR => tracing::error!(stage, key, plugin, "{message}"),
            abi::LOG_WARN => tracing::warn!(stage, key, plugin, "{message}"),
            abi::LOG_INFO => tracing::info!(stage, key, plugin, "{message}"),
            abi::LOG_DEBUG => tracing::debug!(stage, key, plugin, "{message}"),
            _ => tracing::trace!(stage, key, plugin, "{message}"),
        }
    }));
}
