"""Replica choice and the circuit breaker, on the real Redis: the rules the workers share across processes."""

import time

import pytest
from django.test import override_settings

from apps.inference.balancer import CLOSED, HALF_OPEN, OPEN, circuit_states, replica_pick, replica_release

A, B = "http://10.0.0.1:8080", "http://10.0.0.2:8080"


def _pick(urls=(A, B), request_id="r", hold=30.0):
    return replica_pick(schema="alpha", server_id=1, urls=list(urls), request_id=request_id, hold_seconds=hold)


def _release(url, request_id="r", healthy=True):
    return replica_release(schema="alpha", server_id=1, url=url, request_id=request_id, healthy=healthy)


def test_the_replica_with_fewer_outstanding_requests_is_picked():
    first = _pick(request_id="r1").url
    second = _pick(request_id="r2").url
    assert {first, second} == {A, B}  # the second request avoids the busy replica

    _release(first, "r1")
    assert _pick(request_id="r3").url == first
    states = circuit_states(schema="alpha", server_id=1, urls=[A, B])
    assert states[first].outstanding == 1
    assert states[second].outstanding == 1


def test_equally_loaded_replicas_share_the_traffic():
    picks = set()
    for number in range(30):
        url = _pick(request_id=f"r{number}").url
        picks.add(url)
        _release(url, f"r{number}")
    assert picks == {A, B}


def test_a_reservation_nobody_releases_ages_out():
    assert _pick(urls=[A], request_id="lost", hold=0.2).url == A
    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].outstanding == 1
    time.sleep(0.3)
    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].outstanding == 0


@override_settings(CIRCUIT_FAILURE_THRESHOLD=3, CIRCUIT_OPEN_SECONDS=1)
def test_the_circuit_opens_after_consecutive_failures_then_lets_one_trial_through():
    for number in range(2):
        assert _release(A, f"f{number}", healthy=False) == CLOSED
    assert _release(A, "f2", healthy=False) == OPEN
    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].state == OPEN

    assert _pick(request_id="x").url == B  # A is skipped while open
    lone = _pick(urls=[A], request_id="y")
    assert lone.url is None
    assert lone.retry_after >= 1

    time.sleep(1.1)
    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].state == HALF_OPEN
    assert _pick(urls=[A], request_id="trial").url == A
    assert _pick(urls=[A], request_id="second").url is None  # one trial at a time
    assert _release(A, "trial", healthy=True) == CLOSED
    assert _pick(urls=[A], request_id="after").url == A


@override_settings(CIRCUIT_FAILURE_THRESHOLD=3, CIRCUIT_OPEN_SECONDS=1)
def test_a_failed_trial_opens_the_circuit_again_and_a_success_resets_the_count():
    _release(A, "a", healthy=False)
    _release(A, "b", healthy=False)
    _release(A, "c", healthy=True)
    assert _release(A, "d", healthy=False) == CLOSED  # the count restarted

    for name in "efg":
        _release(A, name, healthy=False)
    time.sleep(1.1)
    assert _pick(urls=[A], request_id="trial").url == A
    assert _release(A, "trial", healthy=False) == OPEN
    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].state == OPEN


def test_circuits_are_per_tenant_and_server():
    for name in "abc":
        replica_release(schema="alpha", server_id=1, url=A, request_id=name, healthy=False)

    assert circuit_states(schema="alpha", server_id=1, urls=[A])[A].state == OPEN
    assert circuit_states(schema="bravo", server_id=1, urls=[A])[A].state == CLOSED
    assert circuit_states(schema="alpha", server_id=2, urls=[A])[A].state == CLOSED
    assert replica_pick(schema="bravo", server_id=1, urls=[A], request_id="z", hold_seconds=5).url == A


@pytest.mark.parametrize("urls", [[], ()])
def test_no_replicas_means_no_pick(urls):
    assert _pick(urls=urls).url is None
