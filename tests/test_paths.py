"""minicnn.paths: the folder checks the command lines make before any work."""
import os

from minicnn.paths import file_in_the_way, make_writable_folder


def test_file_in_the_way(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert file_in_the_way(tmp_path) is None                          # a folder
    assert file_in_the_way(tmp_path / "new" / "deeper") is None       # can be created
    assert file_in_the_way(afile) == afile                            # itself a file
    assert file_in_the_way(afile / "x" / "y") == afile                # through a file
    assert not (tmp_path / "new").exists()                            # nothing created


def test_make_writable_folder(tmp_path):
    target = tmp_path / "a" / "b"
    assert make_writable_folder(target) is None and target.is_dir()   # created with its parents
    assert make_writable_folder(target) is None                       # already there
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert make_writable_folder(afile / "sub").startswith(f"cannot create the folder {afile / 'sub'}: ")


def test_make_writable_folder_not_writable(tmp_path, monkeypatch):
    """A folder the process may not write in (os.access says no: as root a
    chmod would not show it, so the answer is stubbed)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert make_writable_folder(tmp_path) == f"the folder {tmp_path} is not writable"
