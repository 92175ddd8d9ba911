"""Matching the classes of an external test folder to the classes a model was trained on.

An external test set names its classes its own way ("NORMAL", "Pneumonia", "smooth_muscle")
and may hold classes the model never saw (the CPN X-ray set's COVID class for a
PneumoniaMNIST model). ``match_classes`` pairs each folder class with a trained class:

* by name, ignoring letter case and treating runs of spaces, underscores and hyphens as one
  space ("Smooth_Muscle" is "smooth muscle");
* or as ``class_map`` says ({folder name: trained name}), which wins over the name;
* or not at all, if it is in ``dropped``.

A folder class left without a trained class is an error naming the trained classes: guessing
would score images against a class they do not belong to. Several folder classes may map
to one trained class ("bacterial" and "viral" to "pneumonia").
"""

from __future__ import annotations

import re


class ClassMatchError(ValueError):
    """Folder classes that cannot be matched; ``str(err)`` is one line for the user."""


def normalise(name: str) -> str:
    """The form in which two class names are compared: lower case, separators as one space."""
    return re.sub(r"[\s_-]+", " ", name).strip().casefold()


def parse_class_map(text: str | None) -> dict[str, str]:
    """``"folder=trained,folder2=trained2"`` as {folder: trained}; names are stripped of
    surrounding spaces and cannot contain "," or "="."""
    if not text:
        return {}
    mapping = {}
    for pair in text.split(","):
        folder, sep, trained = pair.partition("=")
        if not sep or not folder.strip() or not trained.strip():
            raise ClassMatchError(f"--class-map takes folder_name=trained_name pairs separated by commas, got {pair!r}")
        mapping[folder.strip()] = trained.strip()
    return mapping


def _trained_index(name: str, trained: list[str]) -> int | None:
    if name in trained:
        return trained.index(name)
    matches = [k for k, t in enumerate(trained) if normalise(t) == normalise(name)]
    return matches[0] if len(matches) == 1 else None


def match_classes(folder_classes: list[str], trained: list[str], class_map: dict[str, str] | None = None,
                  dropped: list[str] | None = None) -> dict[str, int]:
    """{folder class: index into ``trained``} for every folder class not in ``dropped``.

    ``class_map`` and ``dropped`` must name folder classes that exist, and ``class_map``'s
    targets trained classes (compared as ``normalise`` does); ClassMatchError otherwise, or
    when a folder class matches no trained class.
    """
    class_map, dropped = dict(class_map or {}), list(dropped or [])
    unknown = sorted((set(class_map) | set(dropped)) - set(folder_classes))
    if unknown:
        raise ClassMatchError(f"--class-map or --drop-class names {unknown}, which are not class folders here; "
                              f"the folder's classes: {folder_classes}")
    both = sorted(set(class_map) & set(dropped))
    if both:
        raise ClassMatchError(f"{both} are both mapped (--class-map) and dropped (--drop-class): choose one")
    matched, unmatched = {}, []
    for name in folder_classes:
        if name in dropped:
            continue
        index = _trained_index(class_map.get(name, name), trained)
        if index is None and name in class_map:
            raise ClassMatchError(f"--class-map maps {name!r} to {class_map[name]!r}, which is not a trained class; "
                                  f"the trained classes: {trained}")
        if index is None:
            unmatched.append(name)
        else:
            matched[name] = index
    if unmatched:
        raise ClassMatchError(
            f"folder classes {unmatched} match no trained class (compared ignoring case, spaces, '_' and '-'); "
            f"the trained classes: {trained}; map each with --class-map FOLDER_NAME=TRAINED_NAME or leave it out "
            "with --drop-class FOLDER_NAME")
    if not matched:
        raise ClassMatchError("every folder class is dropped: nothing left to score")
    return matched
