"""What is shown about a store, a layer, a neuron, a token and a document, as frozen dataclasses:
each fact computed once, here, from the views and the masks. The card (`actdb neuron`) renders
them as text, the explorer (`actdb serve`) as HTML and JSON.

explorer.py (per-thread handles, time limit, caches that follow a rebuilt index), overview.py
(the store and its headline numbers), layer.py (a layer's neuron table), neuron.py (one
neuron's facts), contexts.py (where it fires), tokens.py (a token's neurons), document.py (text
with a neuron's fires), console.py (the SQL console).
"""
