"""tcpcopy.cluster"""
