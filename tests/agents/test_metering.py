"""Metering invariants over random delivery/payment interleavings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.services.metering import BuyerMeter, MeteringError, ProviderMeter

steps = st.lists(st.sampled_from(["deliver", "pay", "lose-payment", "freeze", "thaw"]), max_size=80)


@settings(max_examples=400)
@given(
    steps,
    st.integers(1, 50),  # price
    st.integers(0, 120),  # provider credit
    st.integers(0, 120),  # buyer prepay
    st.integers(0, 3_000),  # budget
    st.integers(1, 40),  # min payment
)
def test_neither_side_ever_gets_ahead(
    actions: list[str], price: int, credit: int, prepay: int, budget: int, min_payment: int
) -> None:
    provider = ProviderMeter(price=price, credit=credit)
    buyer = BuyerMeter(price=price, prepay=prepay, budget=budget, min_payment=min_payment)
    channel_total = 0  # what the payee's channel says was paid (durable)
    for action in actions:
        if action == "deliver" and provider.deliverable_units():
            provider = provider.deliver()
            buyer = buyer.receive()
        elif action in ("pay", "lose-payment") and buyer.due():
            amount = buyer.due()
            buyer = buyer.pay(amount)
            if action == "pay":  # a lost payment is signed but never reaches the provider
                channel_total = buyer.paid
                provider = provider.paid_up_to(channel_total)
        elif action == "freeze":
            provider, buyer = provider.freeze(), buyer.freeze()
        elif action == "thaw":
            provider, buyer = provider.thaw(), buyer.thaw()
        # The two promises, at every step.
        assert provider.delivered_value <= provider.paid + credit
        assert buyer.paid <= min(buyer.received_value + prepay, budget)
        assert provider.paid <= buyer.paid


def test_provider_stops_within_one_unit_when_payments_stop() -> None:
    provider = ProviderMeter(price=10, credit=10).paid_up_to(30)
    delivered = 0
    while provider.deliverable_units():
        provider = provider.deliver()
        delivered += 1
    assert delivered == 4  # 3 paid + 1 on credit, then nothing
    with pytest.raises(MeteringError):
        provider.deliver()
    assert provider.owed() == 10


def test_buyer_stops_paying_when_deliveries_stop() -> None:
    buyer = BuyerMeter(price=10, prepay=20, budget=1_000)
    buyer = buyer.pay(buyer.due())  # the prepay window
    assert buyer.paid == 20 and buyer.due() == 0
    buyer = buyer.receive()
    assert buyer.due() == 10  # one more unit's worth, keeping the window
    buyer = buyer.pay(10)
    assert buyer.due() == 0  # nothing arrives: nothing more is paid
    with pytest.raises(MeteringError):
        buyer.pay(1)


def test_budget_and_freezing() -> None:
    buyer = BuyerMeter(price=10, prepay=100, budget=35)
    assert buyer.due() == 35
    buyer = buyer.pay(35)
    assert buyer.due() == 0 and buyer.units_affordable() == 3
    provider = ProviderMeter(price=10, credit=0).paid_up_to(35).freeze()
    assert provider.deliverable_units() == 0
    assert provider.thaw().deliverable_units() == 3


def test_small_amounts_accumulate_until_worth_an_update() -> None:
    buyer = BuyerMeter(price=1, prepay=5, budget=1_000, min_payment=10)
    assert buyer.due() == 0  # 5 sat of prepay is not worth an update
    buyer = buyer.receive(3)
    assert buyer.due() == 8  # but what is owed for delivered units always is


def test_bad_numbers_are_refused() -> None:
    with pytest.raises(MeteringError):
        ProviderMeter(price=0, credit=0)
    with pytest.raises(MeteringError):
        BuyerMeter(price=1, prepay=-1, budget=1)
    with pytest.raises(MeteringError):
        ProviderMeter(price=1, credit=0).paid_up_to(5).paid_up_to(4)
