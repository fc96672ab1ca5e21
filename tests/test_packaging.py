"""What a release carries beside the code: the licence, the change log and the citation, agreeing with the
package's metadata (issue 26). ``.ci/wheel.sh`` checks the built sdist and wheel themselves."""

import configparser
import os
import re

import tf_sharpest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
        return handle.read()


def test_license_is_the_apache_2_text_that_setup_cfg_declares_and_ships():
    text = read("LICENSE")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.split("\n")) > 200  # the whole text, not a stub
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    assert config["metadata"]["license"] == "Apache-2.0"
    assert config["metadata"]["license_files"].split() == ["LICENSE"]  # into the wheel's .dist-info


def test_the_sdist_manifest_carries_licence_changelog_and_citation():
    included = set()
    for line in read("MANIFEST.in").splitlines():
        if line.startswith("include "):
            included.update(line.split()[1:])
    assert {"LICENSE", "CHANGELOG.md", "CITATION.cff"} <= included


def test_citation_names_the_paper_and_the_library_at_its_version():
    """CITATION.cff is valid YAML in the Citation File Format: the library at the package's version, and the
    ICLR 2019 paper with its six authors in order as the preferred citation."""
    import yaml

    citation = yaml.safe_load(read("CITATION.cff"))
    assert citation["cff-version"] == "1.2.0" and citation["type"] == "software"
    assert citation["version"] == tf_sharpest.__version__ and citation["license"] == "Apache-2.0"
    paper = citation["preferred-citation"]
    assert paper["title"] == ("On the Relation Between the Sharpest Directions of DNN Loss and the SGD Step "
                              "Length")
    assert [a["family-names"] for a in paper["authors"]] == ["Jastrzębski", "Kenton", "Ballas", "Fischer",
                                                             "Bengio", "Storkey"]
    assert paper["year"] == 2019 and "ICLR" in paper["conference"]["name"]


def test_changelog_has_an_unreleased_section_and_one_for_the_current_version():
    headings = re.findall(r"^## (.+)$", read("CHANGELOG.md"), flags=re.M)
    assert headings[0] == "Unreleased"
    assert any(h.split(" - ")[0] == tf_sharpest.__version__ for h in headings), headings
