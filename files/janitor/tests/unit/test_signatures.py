"""Signature tags follow their image: `retention.decide` / `decide_attached` on generated
cases (pure), and a prune on synthetic stores (plan.py reads what the kept tags reach).

Tag schemes: cosign's `sha256-<hex>.sig|.att|.sbom` (sigstore/cosign pkg/oci/remote/remote.go
suffixTag) and the OCI referrers fallback tag `sha256-<hex>` (opencontainers/distribution-spec
spec.md, Referrers Tag Schema) whose index lists referrers (image-spec manifest.md `subject`).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import test_sweep
from registry_janitor import retention
from registry_janitor.policy import Rule
from registry_janitor.store import Tag
from synthetic import Store
from test_sweep import OLD, prune

NOW = 1_800_000_000.0
CASES = 2000
SUFFIXES = ("", ".sig", ".att", ".sbom")


def _digest(i: int) -> str:
    return f"sha256:{i:064x}"


def attached_name(digest: str, suffix: str) -> str:
    return digest.replace(":", "-") + suffix


def generate(rng: random.Random) -> tuple[list[Tag], Rule, frozenset[str], frozenset[str] | None]:
    """Ordinary tags, signature tags of digests in the repository and of digests that are not
    (another repository's: ordinary), a rule, the revisions, and what the kept tags reach."""
    digests = [_digest(i) for i in range(rng.randint(1, 10))]
    revisions = frozenset(d for d in digests if rng.random() < 0.8)
    elsewhere = [_digest(1000 + i) for i in range(3)]  # signed images in another repository

    def when() -> float:
        return NOW - rng.choice([0, 30, 600, 3600, 86400 * 3]) - rng.randint(0, 2)

    names = rng.sample([f"{p}{i}" for p in ("v", "build-", "latest") for i in range(30)],
                       rng.randint(0, 15))  # fmt: skip
    tags = [Tag("r", n, rng.choice(digests), when()) for n in names]
    for subject in rng.sample(digests + elsewhere, rng.randint(0, len(digests) + 3)):
        for suffix in rng.sample(SUFFIXES, rng.randint(1, 4)):
            tags.append(Tag("r", attached_name(subject, suffix), rng.choice(digests), when()))
    rule = Rule(
        keep_last_n=rng.randint(0, 6),
        keep_min_age=rng.choice([0, 0, 60, 3600]),
        max_age=rng.choice([None, 86400]),
        protect_tags=rng.choice([None, re.compile(r"v\d+"), re.compile(r"sha256-.*\.sig")]),
    )
    kept = None if rng.random() < 0.1 else frozenset(d for d in revisions if rng.random() < 0.5)
    return tags, rule, revisions, kept


ALL = [(seed, *generate(random.Random(seed))) for seed in range(CASES)]


def test_attached_tags_are_left_out_of_ranking_and_never_count_toward_n() -> None:
    for seed, tags, rule, revisions, _ in ALL:
        ordinary = [t for t in tags if retention.attached_to(t, revisions) is None]
        with_attached = retention.decide(tags, rule, NOW, revisions)
        assert with_attached == retention.decide(ordinary, rule, NOW), seed


def test_every_servable_tag_gets_exactly_one_decision() -> None:
    for seed, tags, rule, revisions, kept in ALL:
        decisions = retention.decide(tags, rule, NOW, revisions) + retention.decide_attached(
            tags, rule, NOW, revisions, kept
        )
        assert sorted(d.tag.name for d in decisions) == sorted(t.name for t in tags), seed


def test_an_attached_tag_is_kept_exactly_while_its_manifest_is_kept() -> None:
    for seed, tags, rule, revisions, kept in ALL:
        for d in retention.decide_attached(tags, rule, NOW, revisions, kept):
            subject = "sha256:" + d.tag.name[len("sha256-") :].split(".")[0]
            assert subject in revisions, seed
            safe = rule.is_protected(d.tag.name) or NOW - d.tag.mtime < rule.keep_min_age
            assert d.keep == (safe or kept is None or subject in kept), (seed, d)


def test_a_signature_of_a_manifest_not_in_the_repository_is_an_ordinary_tag() -> None:
    for seed, tags, rule, revisions, _ in ALL:
        ranked = {d.tag.name for d in retention.decide(tags, rule, NOW, revisions)}
        for t in tags:
            m = retention.ATTACHED_TAG.fullmatch(t.name)
            if m and f"sha256:{m[1]}" not in revisions:
                assert t.name in ranked, seed


def test_the_tag_scheme_is_matched_exactly() -> None:
    d = _digest(5)
    revisions = frozenset({d})
    hexpart = d[7:]
    for name, attached in [
        (f"sha256-{hexpart}.sig", True),
        (f"sha256-{hexpart}.att", True),
        (f"sha256-{hexpart}.sbom", True),
        (f"sha256-{hexpart}", True),
        (f"sha256-{hexpart}.sig2", False),
        (f"sha256-{hexpart[:-1]}.sig", False),
        (f"sha512-{hexpart}.sig", False),
        (f"x-sha256-{hexpart}.sig", False),
    ]:
        assert (retention.attached_to(Tag("r", name, d, NOW), revisions) == d) is attached, name


# -- a prune on synthetic stores -------------------------------------------------------------


@pytest.fixture
def s(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def signature(s: Store, label: str, subject: str | None = None) -> str:
    """A cosign-style signature manifest (an OCI config and one simple-signing layer),
    with an OCI 1.1 `subject` when given (a referrer)."""
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": s.blob(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": s.blob(f"sig {label}".encode()), "size": 4}],
    }  # fmt: skip
    if subject:
        doc["subject"] = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "digest": subject, "size": 1}  # fmt: skip
    return s.blob(json.dumps(doc).encode())


def sign(s: Store, repo: str, image: str, when: float) -> dict[str, str]:
    """.sig, .att and .sbom tags for `image`, pushed at `when` (after the image)."""
    out = {}
    for suffix in (".sig", ".att", ".sbom"):
        name = attached_name(image, suffix)
        out[name] = signature(s, f"{image}{suffix}")
        s.tag(repo, name, out[name], when)
    return out


def test_signature_tags_follow_their_image_and_leave_keep_last_n_to_images(s: Store) -> None:
    images = [s.image(f"v{i}") for i in range(3)]
    sigs = {}
    for i, img in enumerate(images):
        s.tag("app", f"v{i}", img, OLD + 10 * i)
        sigs.update(sign(s, "app", img, OLD + 10 * i + 5))  # signed after the push
    stats = prune(s, revision_grace="0", keep_last_n=2)
    kept_images = images[1:]
    expected = {"v1", "v2"} | {attached_name(img, x) for img in kept_images
                               for x in (".sig", ".att", ".sbom")}  # fmt: skip
    assert test_sweep.tags(s, "app") == expected
    assert stats.tags_deleted == 4  # v0 and its three signature tags, in the same prune
    # The deleted signatures' manifests are unlinked with their image.
    gone = {images[0]} | {sigs[attached_name(images[0], x)] for x in (".sig", ".att", ".sbom")}
    assert test_sweep.revisions(s, "app").isdisjoint(gone)


def test_a_signature_of_a_platform_manifest_of_a_kept_index_stays(s: Store) -> None:
    amd, arm = s.image("amd"), s.image("arm")
    idx = s.index([amd, arm])
    for child in (amd, arm):
        s.revision("multi", child)
    s.tag("multi", "latest", idx, OLD)
    sign(s, "multi", amd, OLD + 1)
    prune(s, revision_grace="0", keep_last_n=1)
    assert test_sweep.tags(s, "multi") == {"latest"} | {attached_name(amd, x) for x in (".sig", ".att",
                                                                          ".sbom")}  # fmt: skip


def test_a_signature_of_an_image_of_another_repository_is_an_ordinary_tag(s: Store) -> None:
    """cosign's COSIGN_REPOSITORY: signatures in a repository of their own."""
    img = s.image("elsewhere")
    s.tag("app", "v1", img, OLD)
    sig_name = attached_name(img, ".sig")
    s.tag("signatures", sig_name, signature(s, "x"), OLD + 5)
    s.tag("signatures", "older-sig", signature(s, "y"), OLD)
    prune(s, revision_grace="0", keep_last_n=1)
    assert test_sweep.tags(s, "signatures") == {sig_name}  # ranked: the newest of the two


def test_the_referrers_fallback_tag_and_its_referrers_follow_the_image(s: Store) -> None:
    """The referrers tag `sha256-<hex>` is an index of the referrers of the image; when the
    image goes, so do the tag and (unlinked) the referrers."""
    images = [s.image(f"v{i}") for i in range(2)]
    referrers = {}
    for i, img in enumerate(images):
        s.tag("app", f"v{i}", img, OLD + 10 * i)
        ref = signature(s, f"ref{i}", subject=img)
        s.revision("app", ref)
        referrers[img] = ref
        s.tag("app", attached_name(img, ""), s.index([ref]), OLD + 10 * i + 5)
    prune(s, revision_grace="0", keep_last_n=1)
    assert test_sweep.tags(s, "app") == {"v1", attached_name(images[1], "")}
    assert referrers[images[1]] in test_sweep.revisions(s, "app")
    assert referrers[images[0]] not in test_sweep.revisions(s, "app")


def test_an_untagged_referrer_stays_linked_while_its_subject_is_kept(s: Store) -> None:
    images = [s.image(f"v{i}") for i in range(2)]
    refs = []
    for i, img in enumerate(images):
        s.tag("app", f"v{i}", img, OLD + 10 * i)
        refs.append(signature(s, f"ref{i}", subject=img))
        s.revision("app", refs[-1])  # pushed by digest (oras attach, cosign OCI 1.1 mode)
    prune(s, revision_grace="0", keep_last_n=1)
    assert test_sweep.revisions(s, "app") == {images[1], refs[1]}


def test_a_referrer_of_a_kept_referrer_stays_too(s: Store) -> None:
    img = s.image("v0")
    s.tag("app", "v0", img, OLD)
    sbom = signature(s, "sbom", subject=img)
    sbom_sig = signature(s, "sbom-sig", subject=sbom)  # a signature of the SBOM
    for d in (sbom, sbom_sig):
        s.revision("app", d)
    prune(s, revision_grace="0", keep_last_n=1)
    assert test_sweep.revisions(s, "app") == {img, sbom, sbom_sig}


def test_signature_tags_stay_when_a_kept_manifest_cannot_be_read(s: Store) -> None:
    images = [s.image(f"v{i}") for i in range(2)]
    for i, img in enumerate(images):
        s.tag("app", f"v{i}", img, OLD + 10 * i)
        sign(s, "app", img, OLD + 10 * i + 5)
    data = s.blobs / "sha256" / images[1][7:9] / images[1][7:] / "data"
    data.unlink()  # the kept image's manifest is missing: what it reaches is unknown
    prune(s, revision_grace="0", keep_last_n=1)
    assert {t for t in test_sweep.tags(s, "app") if t.startswith("sha256-")} == {
        attached_name(img, x) for img in images for x in (".sig", ".att", ".sbom")
    }
