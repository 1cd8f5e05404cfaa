"""Verification copies' names within vSphere's 80-character limit: over any VM name (unicode,
long, with the characters vSphere escapes) and any job id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liverecovery.errors import VerificationRefusedError
from liverecovery.verify.names import (
    MAX_VM_NAME,
    verification_name,
    verification_name_problem,
    vsphere_name_length,
)

vm_names = st.one_of(
    st.text(min_size=1, max_size=100),
    st.text(alphabet="%/\\abc", min_size=1, max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x1FFFF), max_size=40),
)
job_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


def test_how_vsphere_counts() -> None:
    assert vsphere_name_length("web01") == 5
    assert vsphere_name_length("a/b%c\\") == 12  # each escaped to three characters
    assert vsphere_name_length("\N{GRINNING FACE}") == 2  # outside the BMP: two UTF-16 units
    assert vsphere_name_length("数据库") == 3


@given(vm=vm_names, job_id=job_ids)
def test_a_copys_name_fits_starts_with_the_vm_and_is_deterministic(vm: str, job_id: str) -> None:
    problem = verification_name_problem(vm)
    if problem is not None:
        assert vsphere_name_length(vm) > MAX_VM_NAME - len("-verify-") - 8
        assert repr(vm) in problem and "80-character limit" in problem
        full = f"{vm}-verify-{job_id}"
        if vsphere_name_length(full) > MAX_VM_NAME:
            with pytest.raises(VerificationRefusedError, match="80-character limit"):
                verification_name(vm, job_id)
        return
    name = verification_name(vm, job_id)
    assert vsphere_name_length(name) <= MAX_VM_NAME
    assert name.startswith(f"{vm}-verify-")
    assert name == verification_name(vm, job_id)
    if vsphere_name_length(f"{vm}-verify-{job_id}") <= MAX_VM_NAME:
        assert name == f"{vm}-verify-{job_id}"
    else:  # shortened: the job id's hash, at least 8 hex digits
        digits = name.removeprefix(f"{vm}-verify-")
        assert 8 <= len(digits) <= 16 and all(c in "0123456789abcdef" for c in digits)


@given(vm=vm_names, a=job_ids, b=job_ids)
def test_two_jobs_get_two_names(vm: str, a: str, b: str) -> None:
    if a == b or verification_name_problem(vm) is not None:
        return
    assert verification_name(vm, a) != verification_name(vm, b)


def test_a_plans_job_id_is_shortened_and_a_very_long_vm_refused() -> None:
    vm = "finance-reporting-db-primary-eu1"  # 32 characters
    job_id = f"quarter-close-20261206T220000Z.{vm}"
    name = verification_name(vm, job_id)
    assert len(f"{vm}-verify-{job_id}") > 80 and len(name) <= 80
    assert name.startswith(f"{vm}-verify-")
    assert verification_name_problem("x" * 64) is None
    with pytest.raises(VerificationRefusedError) as info:
        verification_name("x" * 65, "0123456789ab")
    assert "'" + "x" * 65 + "'" in str(info.value) and "at most 64" in str(info.value)
