//! `ota-sign`: the vendor's side of signed updates. See `ota_signing::release`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ota_signing::{Expected, release};

#[derive(Parser)]
#[command(
    name = "ota-sign",
    version,
    about = "Make signing keys and sign bsdiff patches for ota-agent"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key pair: <PREFIX>.key (secret, keep it off the robots) and <PREFIX>.pub.
    Keygen {
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Check that PATCH turns --old into --new, then write PATCH.meta.json and PATCH.meta.json.sig.
    Sign {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[command(flatten)]
        identity: Identity,
        #[arg(long, value_name = "FILE")]
        old: PathBuf,
        #[arg(long, value_name = "FILE")]
        new: PathBuf,
        patch: PathBuf,
    },
    /// Check PATCH and its sidecar files as a robot would.
    Verify {
        /// A public key, inline or as a .pub file; repeat for several.
        #[arg(long = "public-key", value_name = "KEY", required = true)]
        public_keys: Vec<String>,
        #[command(flatten)]
        identity: Identity,
        patch: PathBuf,
    },
    /// Write the signed statement of the newest version of one file, for one language and robot
    /// model: OUT and OUT.sig. Publish it at the URL the robots' `statement_url` names, and sign
    /// it again before it expires.
    Statement {
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        #[arg(long)]
        package: String,
        #[arg(long)]
        file_name: String,
        #[arg(long)]
        language: String,
        #[arg(long)]
        robot_version: String,
        /// The newest version code published for the file.
        #[arg(long)]
        latest_version: u64,
        /// How long the statement holds, in seconds.
        #[arg(long, default_value_t = 86_400)]
        lifetime: u64,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct Identity {
    /// The package name, as the robot's config names it.
    #[arg(long)]
    package: String,
    /// The file name within the package.
    #[arg(long)]
    file_name: String,
    /// The language variant the patch is for (`language` of the check, e.g. CN).
    #[arg(long)]
    language: String,
    /// The robot model the patch is for (`robot_version` of the check, e.g. 1).
    #[arg(long)]
    robot_version: String,
    /// The version code the patch applies to.
    #[arg(long)]
    from_version: u64,
    /// The version code the patch leads to.
    #[arg(long)]
    to_version: u64,
}

impl Identity {
    fn expected(&self) -> Expected<'_> {
        Expected {
            package: &self.package,
            file_name: &self.file_name,
            language: &self.language,
            robot_version: &self.robot_version,
            from_version: self.from_version,
            to_version: self.to_version,
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Keygen { out } => {
            let public = release::keygen(&out)?;
            let (secret, public_path) = release::key_paths(&out);
            println!(
                "secret key: {} (keep it secret)\npublic key: {} ({public})",
                secret.display(),
                public_path.display()
            );
        }
        Command::Sign {
            key,
            identity,
            old,
            new,
            patch,
        } => {
            let key = release::read_secret_key(&key)?;
            let meta = release::sign(&key, &identity.expected(), &old, &new, &patch)
                .context("signing failed")?;
            let (meta_path, sig_path) = release::sidecar_paths(&patch);
            println!(
                "signed {} ({} {} → {}): wrote {} and {}",
                patch.display(),
                meta.package,
                meta.from_version,
                meta.to_version,
                meta_path.display(),
                sig_path.display()
            );
        }
        Command::Verify {
            public_keys,
            identity,
            patch,
        } => {
            let keys = public_keys
                .iter()
                .map(|k| release::read_public_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let meta = release::check(&keys, &identity.expected(), &patch)?;
            println!(
                "{}: good signature for {}/{} {} → {}",
                patch.display(),
                meta.package,
                meta.file_name,
                meta.from_version,
                meta.to_version
            );
        }
        Command::Statement {
            key,
            package,
            file_name,
            language,
            robot_version,
            latest_version,
            lifetime,
            out,
        } => {
            let key = release::read_secret_key(&key)?;
            let target = ota_signing::Target {
                package: &package,
                file_name: &file_name,
                language: &language,
                robot_version: &robot_version,
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let statement = ota_signing::Statement::new(&target, latest_version, now, lifetime);
            let (json, signature) = statement.sign(&key);
            let mut sig_path = out.clone().into_os_string();
            sig_path.push(".sig");
            std::fs::write(&out, json)
                .with_context(|| format!("cannot write {}", out.display()))?;
            std::fs::write(&sig_path, signature)
                .with_context(|| format!("cannot write {}", sig_path.to_string_lossy()))?;
            println!(
                "{}/{} {language} model {robot_version}: version {latest_version} is the newest until {}; wrote {} and {}",
                package,
                file_name,
                statement.expires_unix,
                out.display(),
                sig_path.to_string_lossy()
            );
        }
    }
    Ok(())
}
