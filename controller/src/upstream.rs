//! The upstream binaries the host has: `tools/upstream/build` lays them out as
//! `<root>/<component>-<version>/<component>`; this module finds them and picks versions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Binaries of one Kubernetes release plus the datastore binaries every tenant shares.
#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseBinaries {
    /// Full version, e.g. "1.37.2".
    pub version: String,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kine: PathBuf,
    pub etcd: PathBuf,
}

/// Every usable Kubernetes release under an upstream binary root, newest patch per minor.
#[derive(Clone, Debug, Default)]
pub struct UpstreamCatalog {
    /// minor ("1.37") → binaries of its newest patch.
    releases: BTreeMap<(u32, u32), ReleaseBinaries>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CatalogError {
    #[error("no Kubernetes binaries under {0}: run tools/upstream/build")]
    Empty(PathBuf),
    #[error("{component} is missing under {root}: run tools/upstream/build")]
    Missing {
        component: &'static str,
        root: PathBuf,
    },
}

/// The default location of `tools/upstream/build`'s cache.
pub fn default_upstream_root() -> PathBuf {
    let cache = std::env::var_os("HOSTPLANE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/hostplane")))
        .unwrap_or_else(|| PathBuf::from("/var/cache/hostplane"));
    cache.join("bin")
}

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

impl UpstreamCatalog {
    /// Scans `root` for `kube-apiserver-<version>` directories that have a matching
    /// kube-controller-manager, plus one kine and one etcd (the newest).
    pub fn scan(root: &Path) -> Result<Self, CatalogError> {
        let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for entry in std::fs::read_dir(root)
            .map_err(|_| CatalogError::Empty(root.to_path_buf()))?
            .flatten()
        {
            let dir = entry.file_name().to_string_lossy().into_owned();
            if let Some((component, version)) = dir.rsplit_once('-')
                && entry.path().join(component).is_file()
            {
                versions
                    .entry(component.to_string())
                    .or_default()
                    .push(version.to_string());
            }
        }
        let newest = |component: &'static str| -> Result<PathBuf, CatalogError> {
            versions
                .get(component)
                .and_then(|vs| {
                    vs.iter()
                        .filter_map(|v| parse_version(v).map(|p| (p, v)))
                        .max()
                })
                .map(|(_, v)| root.join(format!("{component}-{v}")).join(component))
                .ok_or(CatalogError::Missing {
                    component,
                    root: root.to_path_buf(),
                })
        };
        let kine = newest("kine")?;
        let etcd = newest("etcd")?;
        let mut releases = BTreeMap::new();
        for version in versions.get("kube-apiserver").into_iter().flatten() {
            let Some((major, minor, patch)) = parse_version(version) else {
                continue;
            };
            let path = |c: &str| root.join(format!("{c}-{version}")).join(c);
            if !path("kube-controller-manager").is_file() {
                continue;
            }
            let release = ReleaseBinaries {
                version: version.clone(),
                kube_apiserver: path("kube-apiserver"),
                kube_controller_manager: path("kube-controller-manager"),
                kube_scheduler: path("kube-scheduler"),
                kine: kine.clone(),
                etcd: etcd.clone(),
            };
            let newer = releases
                .get(&(major, minor))
                .and_then(|r: &ReleaseBinaries| parse_version(&r.version))
                .is_none_or(|(_, _, p)| patch > p);
            if newer {
                releases.insert((major, minor), release);
            }
        }
        if releases.is_empty() {
            return Err(CatalogError::Empty(root.to_path_buf()));
        }
        Ok(Self { releases })
    }

    /// The minors available, oldest first ("1.36", "1.37").
    pub fn minors(&self) -> Vec<String> {
        self.releases
            .keys()
            .map(|(a, b)| format!("{a}.{b}"))
            .collect()
    }

    /// The release for a minor such as "1.37", or the newest when `None`.
    pub fn release(&self, minor: Option<&str>) -> Option<&ReleaseBinaries> {
        match minor {
            None => self.releases.values().next_back(),
            Some(m) => {
                let (a, b) = m.split_once('.')?;
                self.releases.get(&(a.parse().ok()?, b.parse().ok()?))
            }
        }
    }

    /// A catalog from explicit releases (tests, and hosts that lay binaries out differently).
    pub fn from_releases(list: Vec<ReleaseBinaries>) -> Self {
        let releases = list
            .into_iter()
            .filter_map(|r| parse_version(&r.version).map(|(a, b, _)| ((a, b), r)))
            .collect();
        Self { releases }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, component: &str, version: &str) {
        let dir = root.join(format!("{component}-{version}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(component), "").unwrap();
    }

    #[test]
    fn scan_picks_newest_patch_per_minor_and_needs_controller_manager() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for v in ["1.36.3", "1.37.1", "1.37.2", "1.35.0"] {
            touch(root, "kube-apiserver", v);
        }
        for v in ["1.36.3", "1.37.1", "1.37.2"] {
            touch(root, "kube-controller-manager", v);
        }
        touch(root, "kine", "0.17.5");
        touch(root, "etcd", "3.6.16");
        let catalog = UpstreamCatalog::scan(root).unwrap();
        assert_eq!(catalog.minors(), vec!["1.36", "1.37"]);
        assert_eq!(catalog.release(None).unwrap().version, "1.37.2");
        assert_eq!(catalog.release(Some("1.36")).unwrap().version, "1.36.3");
        assert_eq!(catalog.release(Some("1.35")), None);
        assert_eq!(
            catalog.release(Some("1.37")).unwrap().kine,
            root.join("kine-0.17.5/kine")
        );
    }

    #[test]
    fn scan_without_binaries_says_how_to_build_them() {
        let tmp = tempfile::tempdir().unwrap();
        touch(tmp.path(), "kube-apiserver", "1.37.2");
        let err = UpstreamCatalog::scan(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "kine is missing under {}: run tools/upstream/build",
                tmp.path().display()
            )
        );
    }
}
