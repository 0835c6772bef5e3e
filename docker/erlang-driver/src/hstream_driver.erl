%% The harness's client driver for the official Erlang client, hstreamdb_erl.
%%
%% Reads one JSON request per line on stdin, answers one JSON line on stdout
%% (harness/clients/PROTOCOL.md). Only hstreamdb_erl's public API is used: the client
%% facade for streams, shards and lookups; a producer (batching, discovery, retries: the
%% behaviour the fault suites are about) for appends; a key reader for reads. The client
%% has no subscription consumer and no shard reader, so those ops answer UNSUPPORTED.
-module(hstream_driver).
-export([main/1]).

-define(GRPC_TIMEOUT, 10000).

main(_Args) ->
    {ok, _} = application:ensure_all_started(hstreamdb_erl),
    ok = io:setopts(standard_io, [binary, {encoding, latin1}]),
    loop(#{client => undefined, producers => #{}, readers => #{}, urls => <<>>}).

loop(State) ->
    case io:get_line(standard_io, <<>>) of
        eof -> ok;
        {error, _} -> ok;
        Line ->
            {Reply, NewState, Continue} = handle_line(Line, State),
            io:put_chars(standard_io, [jiffy:encode(Reply), $\n]),
            case Continue of
                true -> loop(NewState);
                false -> ok
            end
    end.

handle_line(Line, State) ->
    try jiffy:decode(Line, [return_maps]) of
        Request = #{<<"op">> := Op} ->
            Id = maps:get(<<"id">>, Request, null),
            Args = maps:get(<<"args">>, Request, #{}),
            {Result, NewState} =
                try op(Op, Args, State)
                catch Class:Reason:Stack ->
                    io:format(standard_error, "[erlang] ~s crashed: ~p:~p~n~p~n",
                              [Op, Class, Reason, Stack]),
                    %% A crash inside the client after the request may have left: unknown.
                    {{info, undefined, fmt("~p:~p", [Class, Reason])}, State}
                end,
            {reply(Id, Result), NewState, Op =/= <<"close">>}
    catch _:_ ->
        {reply(null, {fail, <<"UNSUPPORTED">>, <<"not a JSON request">>}), State, true}
    end.

reply(Id, {ok, Value}) -> #{id => Id, type => ok, value => Value};
reply(Id, {Type, Status, Error}) ->
    #{id => Id, type => Type, status => status_json(Status), error => to_bin(Error)}.

status_json(undefined) -> null;
status_json(S) -> S.

%% -- operations ---------------------------------------------------------------------

op(<<"connect">>, #{<<"urls">> := Urls}, State) ->
    %% hstreamdb_erl takes a comma-separated URL list and shuffles it; it Echoes each
    %% candidate until one answers.
    Joined = iolist_to_binary(lists:join(<<",">>, [<<"http://", U/binary>> || U <- Urls])),
    case hstreamdb_client:start(#{url => Joined, grpc_timeout => ?GRPC_TIMEOUT,
                                  rpc_options => #{pool_size => 1}}) of
        {ok, Client} ->
            {{ok, #{nodes => [], used => Joined}}, State#{client := Client, urls := Joined}};
        {error, Reason} ->
            {classify(Reason), State}
    end;
op(<<"create_stream">>, Args = #{<<"stream">> := Stream}, State = #{client := C}) ->
    Shards = maps:get(<<"shards">>, Args, 1),
    Repl = maps:get(<<"replication_factor">>, Args, 1),
    result(hstreamdb_client:create_stream(C, Stream, Repl, 24 * 3600, Shards), State);
op(<<"delete_stream">>, Args = #{<<"stream">> := Stream}, State = #{client := C}) ->
    result(hstreamdb_client:delete_stream(C, Stream,
                                          maps:get(<<"ignore_non_exist">>, Args, false),
                                          maps:get(<<"force">>, Args, false)), State);
op(<<"list_shards">>, #{<<"stream">> := Stream}, State = #{client := C}) ->
    case hstreamdb_client:list_shards(C, Stream) of
        {ok, Shards} ->
            {{ok, #{shards => [#{shard_id => maps:get(shardId, S),
                                  start => maps:get(startHashRangeKey, S),
                                  'end' => maps:get(endHashRangeKey, S)} || S <- Shards]}},
             State};
        Other -> {classify(Other), State}
    end;
op(<<"lookup_shard">>, #{<<"shard_id">> := ShardId}, State = #{client := C}) ->
    case hstreamdb_client:lookup_shard(C, ShardId) of
        {ok, {Host, Port}} -> {{ok, #{node => fmt("~s:~p", [Host, Port])}}, State};
        Other -> {classify(Other), State}
    end;
op(<<"append">>, Args = #{<<"stream">> := Stream, <<"records">> := Records}, State) ->
    Key = maps:get(<<"key">>, Args, <<>>),
    Compression = binary_to_existing_atom(maps:get(<<"compression">>, Args, <<"none">>)),
    {Producer, State1} = producer(Stream, Compression, State),
    append_all(Producer, Key, Records, [], State1);
op(<<"read_key">>, Args = #{<<"stream">> := Stream, <<"key">> := Key}, State) ->
    {Reader, State1} = reader(Stream, State),
    Limits = #{from => #{offset => {specialOffset, 0}}, until => #{offset => {specialOffset, 1}},
               readRecordCount => maps:get(<<"max">>, Args, 100000)},
    case hstreamdb:read_stream_key(Reader, Key, Limits) of
        {ok, Recs} -> {{ok, #{records => [record_out(R) || R <- Recs]}}, State1};
        Other -> {classify(Other), State1}
    end;
op(<<"close">>, _, State = #{client := C, producers := Ps, readers := Rs}) ->
    [catch hstreamdb:stop_producer(P) || P <- maps:values(Ps)],
    [catch hstreamdb:stop_reader(R) || R <- maps:values(Rs)],
    C =/= undefined andalso (catch hstreamdb_client:stop(C)),
    {{ok, #{}}, State};
op(Op, _, State) when Op =:= <<"subscribe">>; Op =:= <<"fetch">>; Op =:= <<"ack">>;
                      Op =:= <<"stop_consumer">>; Op =:= <<"delete_subscription">> ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no subscription consumer">>}, State};
op(<<"read_shard">>, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no shard reader (only read by key)">>},
     State};
op(Op, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl driver: no op ", Op/binary>>}, State}.

append_all(_Producer, _Key, [], Ids, State) ->
    {{ok, #{record_ids => lists:reverse(Ids)}}, State};
append_all(Producer, Key, [Record | Rest], Ids, State) ->
    {Flag, Payload} = payload(Record),
    HRecord = hstreamdb:to_record(Key, Flag, Payload),
    case hstreamdb:append_sync(Producer, HRecord, 30000) of
        {ok, #{shardId := S, batchId := B, batchIndex := I}} ->
            append_all(Producer, Key, Rest, [[S, B, I] | Ids], State);
        {ok, Other} ->
            append_all(Producer, Key, Rest, [Other | Ids], State);
        Error ->
            {classify(Error), State}
    end.

payload(#{<<"json">> := Json}) when is_map(Json) ->
    %% A JSON record's payload is a serialized google.protobuf.Struct; hstreamdb_erl
    %% sends the bytes it is given, so JSON records are not something it builds.
    {json, jiffy:encode(Json)};
payload(#{<<"data">> := Data}) ->
    {raw, base64:decode(Data)}.

producer(Stream, Compression, State = #{producers := Ps, urls := Urls}) ->
    Key = {Stream, Compression},
    case maps:find(Key, Ps) of
        {ok, P} -> {P, State};
        error ->
            Name = list_to_atom("producer_" ++ integer_to_list(erlang:unique_integer([positive]))),
            ok = hstreamdb:start_producer(Name, #{
                client_options => #{url => Urls, grpc_timeout => ?GRPC_TIMEOUT},
                stream => Stream,
                buffer_options => #{compression_type => Compression, max_records => 1,
                                    interval => 10}
            }),
            {Name, State#{producers := Ps#{Key => Name}}}
    end.

reader(Stream, State = #{readers := Rs, urls := Urls}) ->
    case maps:find(Stream, Rs) of
        {ok, R} -> {R, State};
        error ->
            Name = "reader_" ++ integer_to_list(erlang:unique_integer([positive])),
            ok = hstreamdb:start_reader(Name, #{mgr_client_options => #{url => Urls},
                                                stream => Stream, pool_size => 1}),
            ok = hstreamdb:wait_for_reader(Name),
            {Name, State#{readers := Rs#{Stream => Name}}}
    end.

record_out(#{header := Header, payload := Payload, recordId := Id}) ->
    #{record_id => [maps:get(shardId, Id), maps:get(batchId, Id), maps:get(batchIndex, Id)],
      key => maps:get(key, Header, <<>>),
      payload_id => payload_id(Payload),
      data => base64:encode(Payload),
      json => null,
      attributes => maps:get(attributes, Header, #{})}.

payload_id(Payload) ->
    case binary:split(Payload, <<"|">>) of
        [Id, _] -> Id;
        _ -> null
    end.

%% -- results and errors ---------------------------------------------------------------

result(ok, State) -> {{ok, #{}}, State};
result({ok, _}, State) -> {{ok, #{}}, State};
result(Error, State) -> {classify(Error), State}.

%% Jepsen's rule, as in harness.history.classify_error: only a server's rejection is definite.
classify({error, {grpc_error, Status, Message}}) ->
    Name = grpc_status_name(Status),
    Type = case lists:member(Name, [<<"INVALID_ARGUMENT">>, <<"NOT_FOUND">>,
                                    <<"ALREADY_EXISTS">>, <<"UNAUTHENTICATED">>,
                                    <<"PERMISSION_DENIED">>, <<"UNIMPLEMENTED">>,
                                    <<"OUT_OF_RANGE">>]) of
               true -> fail;
               false -> info
           end,
    {Type, Name, Message};
classify({error, Reason}) -> {info, undefined, fmt("~p", [Reason])};
classify(Other) -> {info, undefined, fmt("~p", [Other])}.

grpc_status_name(Status) when is_binary(Status) -> grpc_status_name(binary_to_integer(Status));
grpc_status_name(3) -> <<"INVALID_ARGUMENT">>;
grpc_status_name(4) -> <<"DEADLINE_EXCEEDED">>;
grpc_status_name(5) -> <<"NOT_FOUND">>;
grpc_status_name(6) -> <<"ALREADY_EXISTS">>;
grpc_status_name(7) -> <<"PERMISSION_DENIED">>;
grpc_status_name(9) -> <<"FAILED_PRECONDITION">>;
grpc_status_name(11) -> <<"OUT_OF_RANGE">>;
grpc_status_name(12) -> <<"UNIMPLEMENTED">>;
grpc_status_name(13) -> <<"INTERNAL">>;
grpc_status_name(14) -> <<"UNAVAILABLE">>;
grpc_status_name(16) -> <<"UNAUTHENTICATED">>;
grpc_status_name(N) -> fmt("STATUS_~p", [N]).

fmt(Format, Args) -> iolist_to_binary(io_lib:format(Format, Args)).

to_bin(B) when is_binary(B) -> B;
to_bin(Other) -> fmt("~p", [Other]).
