//! The files stagewise keeps its state in (the SQLite store, its lock, the summary, the flight
//! record) are private to the user running it, and a symbolic link planted at one of their
//! paths is refused rather than written through.

mod util;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use util::Pipeline;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn pipeline() -> Pipeline {
    Pipeline::through("private", 5, "", "")
}

#[test]
fn a_run_makes_its_state_folder_0700_and_its_files_0600() {
    let p = pipeline();
    p.run().assert_code(0);
    let state = p.dir.join(".stagewise");
    assert_eq!(mode(&state), 0o700);
    let mut names: Vec<String> = fs::read_dir(&state)
        .expect("list .stagewise")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for expected in [
        "private.db",
        "private.db.lock",
        "private.db.private.flight",
        "private.summary.json",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
    }
    for name in &names {
        assert_eq!(mode(&state.join(name)), 0o600, "{name}");
    }

    // A folder that was there is the operator's: left as it was.
    let p = pipeline();
    fs::create_dir(p.dir.join(".stagewise")).expect("mkdir");
    fs::set_permissions(p.dir.join(".stagewise"), fs::Permissions::from_mode(0o750))
        .expect("chmod");
    p.run().assert_code(0);
    assert_eq!(mode(&p.dir.join(".stagewise")), 0o750);
    assert_eq!(mode(&p.dir.join(".stagewise/private.db")), 0o600);
}

#[test]
fn a_symlinked_lock_or_summary_is_refused_and_its_target_untouched() {
    for link in ["private.db.lock", "private.summary.json", "private.db"] {
        let p = pipeline();
        let victim = p.dir.join("victim.txt");
        fs::write(&victim, "someone else's file\n").expect("write victim");
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::create_dir(p.dir.join(".stagewise")).expect("mkdir");
        std::os::unix::fs::symlink(&victim, p.dir.join(".stagewise").join(link)).expect("symlink");

        let out = p.run();
        out.assert_code(2);
        out.assert_stderr_contains(&format!(
            "./.stagewise/{link} is a symbolic link: stagewise keeps its state in files of its own and never writes through a link"
        ));
        assert_eq!(
            fs::read_to_string(&victim).expect("read victim"),
            "someone else's file\n",
            "{link}"
        );
        assert_eq!(mode(&victim), 0o644, "{link}");
        assert!(p.sink("out.jsonl").keys().is_empty(), "{link}: nothing ran");
        // Still the link: nothing replaced it either.
        assert!(fs::symlink_metadata(p.dir.join(".stagewise").join(link))
            .expect("stat")
            .file_type()
            .is_symlink());
    }
}

#[test]
fn a_state_folder_that_is_a_link_to_another_folder_is_used() {
    // A volume mounted elsewhere, linked as the state folder: the folder is the operator's, only
    // links at the state files themselves are refused.
    let p = pipeline();
    let volume = p.dir.join("volume");
    fs::create_dir(&volume).expect("mkdir volume");
    std::os::unix::fs::symlink(&volume, p.dir.join(".stagewise")).expect("symlink");
    p.run().assert_code(0);
    assert!(
        volume.join("private.db").is_file(),
        "the store is in the linked folder"
    );
    assert_eq!(p.status().count("done"), 5);
    p.run().assert_code(0);
}
