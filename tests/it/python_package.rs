//! The Python package (`python/`): its pytest suite, run by the Python that `$FLAGSTORE_TEST_PYTHON`
//! names, with the package and pytest installed in it (`.ci/run` builds a venv with
//! `pip install ./python pytest` and sets it); skipped, saying so, without it. The suite gets this
//! build's `flagstore` binary, for the tests where the CLI and Python share a store.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

const PYTHON_VARIABLE: &str = "FLAGSTORE_TEST_PYTHON";

#[test]
fn the_python_packages_pytest_suite_passes() {
    let Some(python) = std::env::var_os(PYTHON_VARIABLE).filter(|p| !p.is_empty()) else {
        let _ = writeln!(
            std::io::stderr(),
            "note: {PYTHON_VARIABLE} is unset: the Python package's pytest suite is skipped; \
             .ci/run sets it"
        );
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // From the repository root, so that `import flagstore` finds the installed package, not
    // the source folder `python/flagstore`, which lacks the compiled module.
    let output = Command::new(python)
        .current_dir(&root)
        .args([
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "python/tests",
        ])
        .env("FLAGSTORE_BIN", assert_cmd::cargo::cargo_bin("flagstore"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    assert!(said.contains(" passed"), "{said}");
    // Written past the test harness's capture, as the other skip notes are, so that a run
    // without PostgreSQL or the OpenFeature SDK says what it did not check.
    for skipped in said.lines().filter(|line| line.starts_with("SKIPPED")) {
        let _ = writeln!(std::io::stderr(), "note: python: {skipped}");
    }
}
